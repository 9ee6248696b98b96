// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Base} from "./utils/Base.sol";
import {Vm} from "./utils/Vm.sol";
import {ReentrantToken} from "./mocks/ReentrantToken.sol";
import {Reenterer} from "./mocks/Reenterer.sol";
import {Settlement} from "../src/Settlement.sol";
import {ISettlement} from "../src/interfaces/ISettlement.sol";
import {INodeRegistry} from "../src/interfaces/INodeRegistry.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

/// @notice One test per attack on Settlement and NodeRegistry; each shows the attack fails.
contract SecurityTest is Base {
    /// @dev secp256k1 group order.
    uint256 internal constant SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;
    uint256 internal constant ATTACKER_PK = 0xBAD;

    address internal attacker;

    function setUp() public override {
        super.setUp();
        attacker = vm.addr(ATTACKER_PK);
        _registerNode(node, "node-1");
        _registerNode(node2, "node-2");
    }

    // ================================================================ helpers

    function _balance(address who) internal view returns (uint256) {
        return settlement.escrowOf(who).balance;
    }

    /// @dev Asserts both policies reject the batch's only bad receipt (at `index`) with `reason`:
    ///      settleStrict reverts with it, settle emits it in ReceiptRejected and pays the others.
    function _assertRejected(
        ISettlement.SignedReceipt[] memory batch,
        address caller,
        uint256 index,
        bytes memory reason
    ) internal {
        vm.prank(caller);
        vm.expectRevert(reason);
        settlement.settleStrict(batch);

        vm.recordLogs();
        vm.prank(caller);
        (uint256 settled,) = settlement.settle(batch);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        uint256 found;
        for (uint256 i; i < logs.length; ++i) {
            if (
                logs[i].emitter != address(settlement) || logs[i].topics.length == 0
                    || logs[i].topics[0] != ISettlement.ReceiptRejected.selector
            ) continue;
            (uint256 idx, bytes memory got) = abi.decode(logs[i].data, (uint256, bytes));
            vm.assertEq(idx, index, "rejected index");
            vm.assertEq(got, reason, "rejection reason bytes");
            ++found;
        }
        vm.assertEq(found, 1, "exactly one rejection");
        vm.assertEq(settled, batch.length - 1, "the rest settled");
    }

    function _malleate(ISettlement.Signature memory sig) internal pure returns (ISettlement.Signature memory) {
        return ISettlement.Signature({v: sig.v == 27 ? 28 : 27, r: sig.r, s: bytes32(SECP256K1_N - uint256(sig.s))});
    }

    // ================================================================ receipts

    function test_Attack_ReceiptReplayPaysNothing() public {
        _deposit(payer, 10 ether);
        ISettlement.SignedReceipt memory s = _signed(PAYER_PK, NODE_PK, _receipt(payer, node, 1000, 2 ether));
        vm.prank(node);
        (, uint256 paid) = settlement.settle(_one(s));
        vm.assertEq(paid, 2 ether, "first submission pays");

        uint256 escrowBefore = _balance(payer);
        uint256 earningsBefore = settlement.earnings(node);
        uint256 vaultBefore = token.balanceOf(address(vault));

        // Replayed by the node, by a relayer, strictly, and twice within one batch.
        bytes memory stale = abi.encodeWithSelector(ISettlement.StaleReceipt.selector, payer, node, 2 ether, 2 ether);
        _assertRejected(_one(s), node, 0, stale);
        _assertRejected(_one(s), stranger, 0, stale);
        ISettlement.SignedReceipt[] memory twice = new ISettlement.SignedReceipt[](2);
        twice[0] = s;
        twice[1] = s;
        vm.prank(node);
        (uint256 settled, uint256 paidAgain) = settlement.settle(twice);

        vm.assertEq(settled, 0, "nothing settled");
        vm.assertEq(paidAgain, 0, "nothing paid");
        vm.assertEq(_balance(payer), escrowBefore, "escrow unchanged");
        vm.assertEq(settlement.earnings(node), earningsBefore, "earnings unchanged");
        vm.assertEq(token.balanceOf(address(vault)), vaultBefore, "vault unchanged");
        vm.assertEq(nodes.reputationOf(node).receiptsSettled, 1, "reputation not inflated");
    }

    function test_Attack_WrongChainIdSignatureRejected() public {
        _deposit(payer, 10 ether);
        uint256 home = block.chainid;
        ISettlement.UsageReceipt memory r = _receipt(payer, node, 1000, 2 ether);
        bytes32 homeDigest = settlement.hashReceipt(r);

        // A signature made for another chain (same contract address there) ...
        vm.chainId(home + 1);
        bytes32 foreignDigest = settlement.hashReceipt(r);
        ISettlement.SignedReceipt memory foreign;
        foreign.receipt = r;
        foreign.payerSig = _sign(PAYER_PK, foreignDigest);
        vm.chainId(home);
        vm.assertTrue(foreignDigest != homeDigest, "digest binds the chain id");
        // ... is rejected here.
        _assertRejected(
            _one(foreign), node, 0, abi.encodeWithSelector(ISettlement.InvalidPayerSignature.selector, payer)
        );

        // And a signature made here is rejected on a fork with another chain id.
        ISettlement.SignedReceipt memory local = _signed(PAYER_PK, 0, r);
        vm.chainId(home + 1);
        _assertRejected(_one(local), node, 0, abi.encodeWithSelector(ISettlement.InvalidPayerSignature.selector, payer));
        vm.assertEq(_balance(payer), 10 ether, "nothing paid on the wrong chain");

        vm.chainId(home);
        vm.prank(node);
        (, uint256 paid) = settlement.settle(_one(local));
        vm.assertEq(paid, 2 ether, "the right chain's signature settles");
    }

    function test_Attack_WrongVerifyingContractSignatureRejected() public {
        _deposit(payer, 10 ether);
        vm.prank(admin);
        Settlement other = new Settlement(
            IERC20(address(token)),
            nodes,
            admin,
            ISettlement.Treasury({developers: developers, infrastructure: infrastructure, research: research}),
            UNLOCK_DELAY
        );
        ISettlement.UsageReceipt memory r = _receipt(payer, node, 1000, 2 ether);
        vm.assertTrue(other.hashReceipt(r) != settlement.hashReceipt(r), "digest binds the verifying contract");

        ISettlement.SignedReceipt memory forOther;
        forOther.receipt = r;
        forOther.payerSig = _sign(PAYER_PK, other.hashReceipt(r));
        _assertRejected(
            _one(forOther), node, 0, abi.encodeWithSelector(ISettlement.InvalidPayerSignature.selector, payer)
        );
        vm.assertEq(_balance(payer), 10 ether, "escrow untouched");

        // The reverse: a signature for this deployment does not verify on the other one.
        ISettlement.SignedReceipt memory forThis = _signed(PAYER_PK, 0, r);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.InvalidPayerSignature.selector, payer));
        other.settleStrict(_one(forThis));
    }

    function test_Attack_HighSSignatureRejected() public {
        _deposit(payer, 10 ether);
        ISettlement.UsageReceipt memory r = _receipt(payer, node, 1000, 2 ether);
        bytes32 digest = settlement.hashReceipt(r);
        ISettlement.SignedReceipt memory good = _signed(PAYER_PK, NODE_PK, r);

        ISettlement.Signature memory payerHighS = _malleate(good.payerSig);
        ISettlement.Signature memory nodeHighS = _malleate(good.nodeSig);
        // The twins are valid for the raw precompile: only low-s enforcement stops them.
        vm.assertEq(ecrecover(digest, payerHighS.v, payerHighS.r, payerHighS.s), payer, "payer twin recovers");
        vm.assertEq(ecrecover(digest, nodeHighS.v, nodeHighS.r, nodeHighS.s), node, "node twin recovers");
        vm.assertGt(uint256(payerHighS.s), SECP256K1_N / 2, "high s");

        // (fresh copies: memory structs alias on assignment)
        ISettlement.SignedReceipt memory bad = _signed(PAYER_PK, NODE_PK, r);
        bad.payerSig = payerHighS;
        _assertRejected(
            _one(bad), stranger, 0, abi.encodeWithSelector(ISettlement.InvalidPayerSignature.selector, payer)
        );

        bad = _signed(PAYER_PK, NODE_PK, r);
        bad.nodeSig = nodeHighS;
        _assertRejected(_one(bad), stranger, 0, abi.encodeWithSelector(ISettlement.InvalidNodeSignature.selector, node));
        vm.assertEq(_balance(payer), 10 ether, "nothing paid");

        vm.prank(stranger);
        (, uint256 paid) = settlement.settle(_one(good));
        vm.assertEq(paid, 2 ether, "the low-s original settles");
    }

    function test_Attack_ExpiredReceiptRejectedAtBoundary() public {
        _deposit(payer, 10 ether);
        ISettlement.UsageReceipt memory r = _receipt(payer, node, 1000, 2 ether);
        r.expiry = block.timestamp + 1 hours;
        ISettlement.SignedReceipt memory s = _signed(PAYER_PK, 0, r);

        vm.warp(r.expiry + 1);
        _assertRejected(
            _one(s), node, 0, abi.encodeWithSelector(ISettlement.ReceiptExpired.selector, r.expiry, r.expiry + 1)
        );
        vm.assertEq(_balance(payer), 10 ether, "nothing paid one second late");

        vm.warp(r.expiry);
        vm.prank(node);
        (uint256 settled, uint256 paid) = settlement.settle(_one(s));
        vm.assertEq(settled, 1, "valid through expiry inclusive");
        vm.assertEq(paid, 2 ether, "paid at expiry");
    }

    function test_Attack_UnderfundedEscrowRejectedUntilTopUp() public {
        _deposit(payer, 1 ether);
        ISettlement.SignedReceipt memory s = _signed(PAYER_PK, 0, _receipt(payer, node, 2500, 5 ether));
        _assertRejected(
            _one(s), node, 0, abi.encodeWithSelector(ISettlement.InsufficientEscrow.selector, payer, 5 ether, 1 ether)
        );
        vm.assertEq(_balance(payer), 1 ether, "no partial payment");
        vm.assertEq(settlement.channelOf(payer, node).amount, 0, "channel untouched");
        vm.assertEq(settlement.earnings(node), 0, "node unpaid");

        // Anyone tops the escrow up; the node retries the very same receipt.
        _mint(stranger, 4 ether);
        vm.startPrank(stranger);
        token.approve(address(settlement), 4 ether);
        settlement.depositFor(payer, 4 ether);
        vm.stopPrank();

        vm.prank(node);
        (uint256 settled, uint256 paid) = settlement.settle(_one(s));
        vm.assertEq(settled, 1, "settles after top-up");
        vm.assertEq(paid, 5 ether, "pays in full");
        vm.assertEq(_balance(payer), 0, "escrow spent");
        vm.assertEq(settlement.earnings(node), 1.5 ether, "node part");
    }

    // ================================================================ escrow and stake

    function test_Attack_StrangerCannotResetPayerUnlock() public {
        _deposit(payer, 10 ether);
        vm.prank(payer);
        settlement.requestUnlock(6 ether);
        uint64 readyAt = settlement.escrowOf(payer).unlockReadyAt;
        vm.assertEq(readyAt, block.timestamp + UNLOCK_DELAY, "readyAt");

        vm.warp(block.timestamp + 12 hours);
        _mint(stranger, 5 ether);
        vm.startPrank(stranger);
        token.approve(address(settlement), 5 ether);
        settlement.depositFor(payer, 5 ether);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.InsufficientEscrow.selector, stranger, 1, 0));
        settlement.requestUnlock(1);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.NoUnlockPending.selector, stranger));
        settlement.cancelUnlock();
        vm.expectRevert(abi.encodeWithSelector(ISettlement.NoUnlockPending.selector, stranger));
        settlement.withdraw();
        vm.stopPrank();

        ISettlement.Escrow memory e = settlement.escrowOf(payer);
        vm.assertEq(e.unlockReadyAt, readyAt, "readyAt unchanged by a stranger");
        vm.assertEq(e.unlocking, 6 ether, "unlocking unchanged");
        vm.assertEq(e.balance, 15 ether, "top-up credited");

        vm.warp(readyAt);
        vm.prank(payer);
        vm.assertEq(settlement.withdraw(), 6 ether, "payer withdraws on the original schedule");
        vm.assertEq(token.balanceOf(payer), 6 ether, "received");
    }

    function test_Attack_StrangerCannotResetNodeUnbonding() public {
        _stake(node, 500 ether);
        vm.prank(node);
        nodes.requestUnbond(500 ether);
        INodeRegistry.Node memory before = nodes.getNode(node);
        vm.assertEq(before.unbondingReadyAt, block.timestamp + UNBONDING_PERIOD, "readyAt");

        vm.warp(block.timestamp + 1 days);
        vm.startPrank(stranger);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.InsufficientStake.selector, 1, 0));
        nodes.requestUnbond(1);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.NothingUnbonding.selector, stranger));
        nodes.cancelUnbond();
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.NothingUnbonding.selector, stranger));
        nodes.withdrawStake();
        vm.expectRevert(
            abi.encodeWithSelector(
                IAccessControl.AccessControlUnauthorizedAccount.selector, stranger, keccak256("SLASHER_ROLE")
            )
        );
        nodes.slash(node, 1, "grief");
        vm.stopPrank();
        // A stranger's own stake and unbonding live in its own record.
        _stake(stranger, 10 ether);
        vm.prank(stranger);
        nodes.requestUnbond(10 ether);

        INodeRegistry.Node memory afterwards = nodes.getNode(node);
        vm.assertEq(afterwards.unbondingReadyAt, before.unbondingReadyAt, "readyAt unchanged");
        vm.assertEq(afterwards.unbonding, 500 ether, "unbonding unchanged");
        vm.assertEq(afterwards.stake, MIN_STAKE, "stake unchanged");

        vm.warp(before.unbondingReadyAt);
        vm.prank(node);
        nodes.withdrawStake();
        vm.assertEq(token.balanceOf(node), 500 ether, "node withdraws on the original schedule");
    }

    function test_Attack_StrangerCannotWriteReputation() public {
        bytes32 role = nodes.SETTLEMENT_ROLE();
        vm.prank(stranger);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, stranger, role)
        );
        nodes.recordSettlement(node, 1e9, 1e27, 1e6);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, node, role));
        nodes.recordSettlement(node, 1e9, 1e27, 1e6);
        vm.assertEq(nodes.reputationOf(node).volumePaid, 0, "reputation untouched");
    }

    function test_Attack_SelfDealingNodeLoses70Percent() public {
        uint256 spend = 100 ether;
        _deposit(node, spend); // the node funds an escrow in its own name
        vm.assertEq(token.balanceOf(node), 0, "all spent into escrow");

        ISettlement.SignedReceipt memory s = _signed(NODE_PK, 0, _receipt(node, node, 50_000, spend));
        vm.prank(node);
        (, uint256 paid) = settlement.settle(_one(s));
        vm.assertEq(paid, spend, "paid itself");
        vm.prank(node);
        uint256 back = settlement.withdrawEarnings();

        vm.assertEq(back, spend * 3000 / 10_000, "only the 30% node part comes back");
        vm.assertEq(token.balanceOf(node) + _balance(node), 30 ether, "node holds 30 of 100");
        vm.assertEq(spend - back, 70 ether, "net loss 70%");
        vm.assertEq(settlement.earnings(developers), 25 ether, "developers got 25%");
        vm.assertEq(settlement.earnings(infrastructure), 15 ether, "infrastructure got 15%");
        vm.assertEq(settlement.earnings(research), 10 ether, "research got 10%");
        vm.assertEq(token.balanceOf(address(vault)), 20 ether, "vault got 20%");
        vm.assertEq(nodes.reputationOf(node).volumePaid, spend, "the reputation it bought");
    }

    function test_Attack_SlashingReachesUnbondingStake() public {
        vm.prank(node);
        nodes.requestUnbond(600 ether);
        INodeRegistry.Node memory n = nodes.getNode(node);
        vm.assertEq(n.stake, 400 ether, "active");
        vm.assertEq(n.unbonding, 600 ether, "unbonding");

        vm.warp(block.timestamp + UNBONDING_PERIOD / 2);
        uint256 vaultBefore = token.balanceOf(address(vault));
        vm.expectEmit(true, true, false, true, address(nodes));
        emit INodeRegistry.NodeSlashed(node, slasher, 400 ether, 300 ether, "served a wrong model");
        vm.prank(slasher);
        nodes.slash(node, 700 ether, "served a wrong model");

        n = nodes.getNode(node);
        vm.assertEq(n.stake, 0, "active stake taken first");
        vm.assertEq(n.unbonding, 300 ether, "then unbonding stake");
        vm.assertEq(token.balanceOf(address(vault)) - vaultBefore, 700 ether, "slash sent to the vault");
        INodeRegistry.Reputation memory rep = nodes.reputationOf(node);
        vm.assertEq(rep.slashCount, 1, "slash count");
        vm.assertEq(rep.totalSlashed, 700 ether, "total slashed");

        vm.warp(n.unbondingReadyAt);
        vm.prank(node);
        nodes.withdrawStake();
        vm.assertEq(token.balanceOf(node), 300 ether, "only the unslashed rest leaves");
    }

    function test_Attack_EarlyEscrowWithdrawReverts() public {
        _deposit(payer, 10 ether);
        vm.prank(payer);
        settlement.requestUnlock(10 ether);
        uint256 readyAt = block.timestamp + UNLOCK_DELAY;

        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnlockNotReady.selector, readyAt, block.timestamp));
        settlement.withdraw();

        vm.warp(readyAt - 1);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnlockNotReady.selector, readyAt, readyAt - 1));
        settlement.withdraw();
        vm.assertEq(_balance(payer), 10 ether, "escrow intact");
        vm.assertEq(token.balanceOf(payer), 0, "nothing left early");

        // Meanwhile the node can still collect what it is owed.
        ISettlement.SignedReceipt[] memory batch = _one(_signed(PAYER_PK, 0, _receipt(payer, node, 1000, 2 ether)));
        vm.prank(node);
        (, uint256 paid) = settlement.settle(batch);
        vm.assertEq(paid, 2 ether, "node settled during the delay");
    }

    function test_Attack_EarlyStakeWithdrawReverts() public {
        vm.prank(node);
        nodes.requestUnbond(MIN_STAKE);
        uint256 readyAt = block.timestamp + UNBONDING_PERIOD;

        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.UnbondingNotReady.selector, readyAt, block.timestamp));
        nodes.withdrawStake();

        vm.warp(readyAt - 1);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.UnbondingNotReady.selector, readyAt, readyAt - 1));
        nodes.withdrawStake();
        vm.assertEq(nodes.getNode(node).unbonding, MIN_STAKE, "still unbonding");
        vm.assertEq(token.balanceOf(node), 0, "nothing left early");

        vm.warp(readyAt);
        vm.prank(node);
        nodes.withdrawStake();
        vm.assertEq(token.balanceOf(node), MIN_STAKE, "withdrawn at readyAt");
    }

    // ================================================================ forgery and redirection

    function test_Attack_StrangerCannotSettleWithForgedNodeSignature() public {
        _deposit(payer, 10 ether);
        ISettlement.UsageReceipt memory r = _receipt(payer, node, 1000, 2 ether);
        bytes memory reason = abi.encodeWithSelector(ISettlement.InvalidNodeSignature.selector, node);

        // Node signature made with the attacker's own key.
        ISettlement.SignedReceipt memory forged = _signed(PAYER_PK, ATTACKER_PK, r);
        _assertRejected(_one(forged), attacker, 0, reason);
        // The payer's signature copied into the node slot.
        forged.nodeSig = forged.payerSig;
        _assertRejected(_one(forged), attacker, 0, reason);
        // No node signature at all.
        forged.nodeSig = ISettlement.Signature(0, 0, 0);
        _assertRejected(_one(forged), attacker, 0, reason);

        vm.assertEq(_balance(payer), 10 ether, "escrow untouched");
        vm.assertEq(settlement.earnings(node), 0, "nothing settled");
        vm.assertEq(settlement.channelOf(payer, node).amount, 0, "channel untouched");
    }

    function test_Attack_StrangerCannotSpendAnotherPayersEscrow() public {
        _deposit(payer, 10 ether);
        // The attacker writes a receipt in the victim's name and signs it itself.
        ISettlement.SignedReceipt memory forged = _signed(ATTACKER_PK, NODE_PK, _receipt(payer, node, 1000, 10 ether));
        _assertRejected(
            _one(forged), node, 0, abi.encodeWithSelector(ISettlement.InvalidPayerSignature.selector, payer)
        );
        vm.assertEq(_balance(payer), 10 ether, "victim's escrow untouched");
    }

    function test_Attack_RequestAuthSignatureCannotSettleReceipt() public {
        _deposit(payer, 10 ether);
        // A request authorisation (same EIP-712 domain) is handed to the node with every request.
        ISettlement.RequestAuth memory auth = ISettlement.RequestAuth({
            payer: payer,
            node: node,
            modelId: modelId,
            maxTokens: 4096,
            maxPricePer1k: 10 ether,
            nonce: 1,
            deadline: block.timestamp + 1 days
        });
        ISettlement.Signature memory authSig = _sign(PAYER_PK, settlement.hashRequestAuth(auth));
        vm.assertEq(settlement.recoverRequestSigner(auth, authSig), payer, "valid authorisation");

        // The node tries to pass it off as a receipt for the most it could charge.
        ISettlement.SignedReceipt memory s;
        s.receipt = _receipt(payer, node, 4096, 10 ether);
        s.payerSig = authSig;
        _assertRejected(_one(s), node, 0, abi.encodeWithSelector(ISettlement.InvalidPayerSignature.selector, payer));
        vm.assertEq(_balance(payer), 10 ether, "escrow untouched");

        // And a receipt signature does not authorise a request.
        ISettlement.Signature memory receiptSig = _sign(PAYER_PK, settlement.hashReceipt(s.receipt));
        vm.assertTrue(settlement.recoverRequestSigner(auth, receiptSig) != payer, "typehash separates the two");
    }

    function test_Attack_ReceiptCannotBeRedirectedToAnotherNode() public {
        _deposit(payer, 10 ether);
        ISettlement.SignedReceipt memory forA = _signed(PAYER_PK, NODE_PK, _receipt(payer, node, 1000, 2 ether));

        // Node B rewrites the node field and submits itself (so no node signature is needed).
        ISettlement.SignedReceipt memory redirected;
        redirected.receipt = _receipt(payer, node2, 1000, 2 ether);
        redirected.payerSig = forA.payerSig;
        redirected.nodeSig = _sign(NODE2_PK, settlement.hashReceipt(redirected.receipt));
        _assertRejected(
            _one(redirected), node2, 0, abi.encodeWithSelector(ISettlement.InvalidPayerSignature.selector, payer)
        );
        // Node B submitting A's receipt unchanged, without A's signature, is not A.
        ISettlement.SignedReceipt memory unsignedByA = _signed(PAYER_PK, 0, forA.receipt);
        _assertRejected(
            _one(unsignedByA), node2, 0, abi.encodeWithSelector(ISettlement.InvalidNodeSignature.selector, node)
        );
        vm.assertEq(settlement.channelOf(payer, node2).amount, 0, "no channel to B");

        // Even with A's signature, B's submission pays A, never B.
        vm.prank(node2);
        settlement.settle(_one(forA));
        vm.assertEq(settlement.earnings(node2), 0, "B earns nothing");
        vm.assertEq(settlement.earnings(node), 0.6 ether, "A is paid");
        vm.assertEq(nodes.reputationOf(node2).volumePaid, 0, "B's reputation untouched");
    }
}

/// @notice Reentrancy through a token with transfer callbacks, on a marketplace deployed around it.
contract ReentrancyAttackTest is Base {
    ReentrantToken internal rtoken;
    Reenterer internal evil;

    function setUp() public override {
        vm.warp(1_700_000_000);
        node = vm.addr(NODE_PK);
        node2 = vm.addr(NODE2_PK);
        payer = vm.addr(PAYER_PK);
        payer2 = vm.addr(PAYER2_PK);
        rtoken = new ReentrantToken(admin);
        _deploy(rtoken);
        modelId = _approvedModel("gemma-3-270m", "bafkreigemma");
        _registerNode(node, "node-1");
        evil = new Reenterer();
        rtoken.setHook(address(evil));
    }

    function _assertReentryBlocked() internal view {
        vm.assertTrue(evil.attempted(), "reentrant call attempted");
        vm.assertFalse(evil.succeeded(), "reentrant call failed");
        vm.assertEq(
            evil.returnData(),
            abi.encodeWithSelector(ReentrancyGuard.ReentrancyGuardReentrantCall.selector),
            "failed with ReentrancyGuardReentrantCall"
        );
    }

    /// @dev The attacker deposits `amount` into its own escrow.
    function _evilDeposit(uint256 amount) internal {
        _mint(address(evil), amount);
        evil.exec(address(token), abi.encodeCall(IERC20.approve, (address(settlement), amount)));
        evil.exec(address(settlement), abi.encodeCall(ISettlement.deposit, (amount)));
    }

    function test_Attack_ReentrantTokenCannotReenterSettle() public {
        _deposit(payer, 10 ether);
        _deposit(payer2, 10 ether);
        ISettlement.SignedReceipt memory first = _signed(PAYER_PK, NODE_PK, _receipt(payer, node, 1000, 2 ether));
        ISettlement.SignedReceipt memory second = _signed(PAYER2_PK, NODE_PK, _receipt(payer2, node, 1500, 3 ether));
        // During the vault transfer of the first settlement, settle the second one again from inside.
        evil.arm(address(settlement), abi.encodeCall(ISettlement.settle, (_one(second))));

        vm.prank(node);
        (uint256 settled, uint256 paid) = settlement.settle(_one(first));

        _assertReentryBlocked();
        vm.assertEq(settled, 1, "outer settled");
        vm.assertEq(paid, 2 ether, "outer paid");
        vm.assertEq(settlement.earnings(node), 0.6 ether, "node part of the outer payment only");
        vm.assertEq(token.balanceOf(address(vault)), 0.4 ether, "vault part of the outer payment only");
        vm.assertEq(_escrow(payer2), 10 ether, "inner payer untouched");
        vm.assertEq(settlement.channelOf(payer2, node).amount, 0, "inner channel untouched");
        vm.assertEq(nodes.reputationOf(node).receiptsSettled, 1, "reputation counted once");

        // The inner batch was valid: outside a settlement it goes through.
        bytes memory ret = evil.exec(address(settlement), abi.encodeCall(ISettlement.settle, (_one(second))));
        (, uint256 innerPaid) = abi.decode(ret, (uint256, uint256));
        vm.assertEq(innerPaid, 3 ether, "inner batch settles on its own");
    }

    function test_Attack_ReentrantTokenCannotReenterWithdraw() public {
        _evilDeposit(10 ether);
        evil.exec(address(settlement), abi.encodeCall(ISettlement.requestUnlock, (10 ether)));
        vm.warp(block.timestamp + UNLOCK_DELAY);
        evil.arm(address(settlement), abi.encodeCall(ISettlement.withdraw, ()));

        bytes memory ret = evil.exec(address(settlement), abi.encodeCall(ISettlement.withdraw, ()));

        _assertReentryBlocked();
        vm.assertEq(abi.decode(ret, (uint256)), 10 ether, "outer withdrew");
        vm.assertEq(token.balanceOf(address(evil)), 10 ether, "paid exactly once");
        vm.assertEq(_escrow(address(evil)), 0, "escrow emptied");
        vm.assertEq(token.balanceOf(address(settlement)), 0, "nothing else left the contract");
    }

    function test_Attack_ReentrantTokenCannotReenterWithdrawDuringSettle() public {
        _evilDeposit(10 ether);
        evil.exec(address(settlement), abi.encodeCall(ISettlement.requestUnlock, (10 ether)));
        vm.warp(block.timestamp + UNLOCK_DELAY);
        _deposit(payer, 10 ether);
        // A payer whose unlock is ready tries to withdraw from inside a settlement.
        evil.arm(address(settlement), abi.encodeCall(ISettlement.withdraw, ()));

        ISettlement.SignedReceipt[] memory batch = _one(_signed(PAYER_PK, 0, _receipt(payer, node, 1000, 2 ether)));
        vm.prank(node);
        (, uint256 paid) = settlement.settle(batch);

        _assertReentryBlocked();
        vm.assertEq(paid, 2 ether, "outer settlement paid");
        vm.assertEq(_escrow(payer), 8 ether, "payer charged");
        vm.assertEq(_escrow(address(evil)), 10 ether, "attacker escrow untouched");
        vm.assertEq(token.balanceOf(address(evil)), 0, "attacker got nothing inside");

        evil.exec(address(settlement), abi.encodeCall(ISettlement.withdraw, ()));
        vm.assertEq(token.balanceOf(address(evil)), 10 ether, "withdraw works outside");
    }

    function test_Attack_ReentrantTokenCannotReenterWithdrawEarnings() public {
        vm.prank(admin);
        settlement.setTreasury(
            ISettlement.Treasury({developers: address(evil), infrastructure: infrastructure, research: research})
        );
        _deposit(payer, 10 ether);
        ISettlement.SignedReceipt[] memory batch = _one(_signed(PAYER_PK, 0, _receipt(payer, node, 1000, 2 ether)));
        vm.prank(node);
        settlement.settle(batch);
        vm.assertEq(settlement.earnings(address(evil)), 0.5 ether, "attacker earned the developers part");
        evil.arm(address(settlement), abi.encodeCall(ISettlement.withdrawEarnings, ()));

        bytes memory ret = evil.exec(address(settlement), abi.encodeCall(ISettlement.withdrawEarnings, ()));

        _assertReentryBlocked();
        vm.assertEq(abi.decode(ret, (uint256)), 0.5 ether, "outer amount");
        vm.assertEq(token.balanceOf(address(evil)), 0.5 ether, "paid exactly once");
        vm.assertEq(settlement.earnings(address(evil)), 0, "earnings zeroed");
        vm.assertEq(
            token.balanceOf(address(settlement)),
            _escrow(payer) + settlement.earnings(node) + settlement.earnings(infrastructure)
                + settlement.earnings(research),
            "contract still backs everyone else"
        );
    }

    function test_Attack_ReentrantTokenCannotReenterDeposit() public {
        _mint(address(evil), 10 ether);
        evil.exec(address(token), abi.encodeCall(IERC20.approve, (address(settlement), 10 ether)));
        evil.arm(address(settlement), abi.encodeCall(ISettlement.deposit, (5 ether)));

        evil.exec(address(settlement), abi.encodeCall(ISettlement.deposit, (5 ether)));

        _assertReentryBlocked();
        vm.assertEq(_escrow(address(evil)), 5 ether, "credited once");
        vm.assertEq(token.balanceOf(address(settlement)), 5 ether, "pulled once");
        vm.assertEq(token.balanceOf(address(evil)), 5 ether, "attacker kept the rest");
    }

    function test_Attack_ReentrantTokenCannotReenterWithdrawStake() public {
        _mint(address(evil), MIN_STAKE);
        evil.exec(address(token), abi.encodeCall(IERC20.approve, (address(nodes), MIN_STAKE)));
        evil.exec(address(nodes), abi.encodeCall(INodeRegistry.stake, (MIN_STAKE)));
        evil.exec(address(nodes), abi.encodeCall(INodeRegistry.requestUnbond, (MIN_STAKE)));
        vm.warp(block.timestamp + UNBONDING_PERIOD);
        evil.arm(address(nodes), abi.encodeCall(INodeRegistry.withdrawStake, ()));

        evil.exec(address(nodes), abi.encodeCall(INodeRegistry.withdrawStake, ()));

        _assertReentryBlocked();
        vm.assertEq(token.balanceOf(address(evil)), MIN_STAKE, "stake paid exactly once");
        vm.assertEq(nodes.getNode(address(evil)).unbonding, 0, "unbonding cleared");
        vm.assertEq(token.balanceOf(address(nodes)), MIN_STAKE, "the honest node's stake stays");
        vm.assertEq(nodes.getNode(node).stake, MIN_STAKE, "honest stake recorded");
    }

    function _escrow(address who) internal view returns (uint256) {
        return settlement.escrowOf(who).balance;
    }
}
