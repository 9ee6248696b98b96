// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Base} from "./utils/Base.sol";
import {Vm} from "./utils/Vm.sol";
import {HysaVault} from "../src/HysaVault.sol";
import {Settlement} from "../src/Settlement.sol";
import {ISettlement} from "../src/interfaces/ISettlement.sol";
import {INodeRegistry} from "../src/interfaces/INodeRegistry.sol";
import {IModelRegistry} from "../src/interfaces/IModelRegistry.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @notice A node's helper contract that sandwiches its own settle: deposit into the vault,
///         settle, redeem, all in one transaction.
contract VaultSandwicher {
    function run(HysaVault vault, Settlement settlement, ISettlement.SignedReceipt[] calldata batch, uint256 capital)
        external
        returns (uint256 out)
    {
        IERC20 token = IERC20(vault.asset());
        token.approve(address(vault), capital);
        uint256 shares = vault.deposit(capital, address(this));
        settlement.settle(batch);
        out = vault.redeem(shares, msg.sender, address(this));
    }
}

/// @notice The attacks an outside review proved against the contracts, one test each (numbered as
///         in the review); each performs the attack and shows it now fails.
contract ReviewAttackTest is Base {
    event log_named_uint(string key, uint256 val);

    address internal attacker = address(0xBAD);

    function setUp() public override {
        super.setUp();
        _registerNode(node, "node-1");
        _registerNode(node2, "node-2");
    }

    /// @dev The reason of the ReceiptRejected event for the receipt at `index` ("" when none).
    function _rejection(Vm.Log[] memory logs, uint256 index) internal view returns (bytes memory) {
        (uint256[] memory indexes, bytes[] memory reasons) = _rejections(logs);
        for (uint256 i; i < indexes.length; ++i) {
            if (indexes[i] == index) return reasons[i];
        }
        return "";
    }

    // ------------------------------------------------------------ 1. vault sandwich

    /// @dev The review's numbers: 1,001 MESH in the vault, a 50,000 MESH batch (10,000 to the
    ///      vault), 100,000 MESH of attacker capital. Before: the attacker took 9,900.9 MESH in one
    ///      block and the honest holder kept 99 of 9,990. Now the attacker takes nothing.
    function test_Attack1_VaultSandwichAroundSettleEarnsNothing() public {
        _vaultDeposit(stranger, 1001 ether);
        _deposit(payer, 50_000 ether);
        uint256 capital = 100_000 ether;
        uint256 shares = _vaultDeposit(attacker, capital);

        ISettlement.SignedReceipt memory s = _signed(PAYER_PK, 0, _receipt(payer, node, 25_000_000, 50_000 ether));
        vm.prank(node);
        settlement.settle(_one(s));
        vm.assertEq(token.balanceOf(address(vault)), 1001 ether + capital + 10_000 ether, "20% arrived");

        vm.prank(attacker);
        uint256 out = vault.redeem(shares, attacker, attacker);
        emit log_named_uint("attacker profit (wei), was 9,900.9 MESH", out > capital ? out - capital : 0);
        vm.assertLe(out, capital, "the sandwich earns nothing");

        vm.warp(block.timestamp + vault.VESTING_PERIOD());
        uint256 honest = _redeemAll(stranger);
        emit log_named_uint("honest holder after one vesting period (wei), was 99 MESH of the fee", honest);
        vm.assertGe(honest, 11_001 ether - 1e9, "the long holder gets the whole 10,000");
    }

    /// @dev The same, atomically through a helper contract of the node's: before, the node kept ~50%
    ///      of what its payers paid instead of 30%. Now it keeps 30% and gets its capital back.
    function test_Attack1_NodeCannotSandwichItsOwnSettleAtomically() public {
        _vaultDeposit(stranger, 1001 ether);
        _deposit(payer, 50_000 ether);
        VaultSandwicher helper = new VaultSandwicher();
        uint256 capital = 100_000 ether;
        _mint(address(helper), capital);

        ISettlement.SignedReceipt memory s = _signed(PAYER_PK, NODE_PK, _receipt(payer, node, 25_000_000, 50_000 ether));
        vm.prank(node);
        uint256 out = helper.run(vault, settlement, _one(s), capital);
        vm.assertLe(out, capital, "no vault income for the node");
        vm.assertEq(settlement.earnings(node), 15_000 ether, "the node keeps its 30%, nothing more");
    }

    // ------------------------------------------------------------ 2. matured unlock never lapses

    function test_Attack2_MaturedUnlockCannotBeKeptInReserve() public {
        _deposit(payer, 10 ether);
        vm.prank(payer);
        settlement.requestUnlock(10 ether);
        uint256 readyAt = block.timestamp + UNLOCK_DELAY;
        vm.assertEq(settlement.availableOf(payer), 0, "unlocking escrow is not available to nodes");

        // The payer waits out delay and window, then is served and tries to withdraw first.
        uint256 lapsedAt = readyAt + settlement.UNLOCK_WINDOW();
        vm.warp(lapsedAt + 1);
        vm.assertEq(settlement.availableOf(payer), 10 ether, "a lapsed unlock reserves nothing");
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnlockLapsed.selector, readyAt, lapsedAt, lapsedAt + 1));
        vm.prank(payer);
        settlement.withdraw();

        (uint256 settled, uint256 paid) = _settleAs(node, _signed(PAYER_PK, 0, _receipt(payer, node, 2000, 4 ether)));
        vm.assertEq(settled, 1, "the node is paid");
        vm.assertEq(paid, 4 ether, "in full");
    }

    function test_Attack2_UnlockWithdrawableOnlyInItsWindow() public {
        _deposit(payer, 10 ether);
        vm.prank(payer);
        settlement.requestUnlock(6 ether);
        uint256 readyAt = block.timestamp + UNLOCK_DELAY;
        vm.assertEq(settlement.availableOf(payer), 4 ether, "balance minus what is unlocking");
        vm.warp(readyAt + settlement.UNLOCK_WINDOW());
        vm.prank(payer);
        vm.assertEq(settlement.withdraw(), 6 ether, "withdrawable through the window's last second");
    }

    // ------------------------------------------------------------ 3. reputation for dust

    function test_Attack3_DustReceiptBuysNoReputation() public {
        _deposit(node, 1 ether);
        uint64 lastBefore = nodes.reputationOf(node).lastSettledAt;
        ISettlement.SignedReceipt memory s = _signed(NODE_PK, 0, _receipt(node, node, type(uint128).max, 1));
        vm.warp(block.timestamp + 1 hours);
        (uint256 settled,) = _settleAs(node, s);
        vm.assertEq(settled, 1, "the wei is paid");
        INodeRegistry.Reputation memory rep = nodes.reputationOf(node);
        vm.assertEq(uint256(rep.tokensServed), 0, "was 2^128-1: a wei pays for no token");
        vm.assertEq(uint256(rep.receiptsSettled), 0, "a receipt under 1K tokens' worth does not count");
        vm.assertEq(uint256(rep.lastSettledAt), uint256(lastBefore), "nor refreshes the recency");
        vm.assertEq(uint256(rep.volumePaid), 1, "volume is what was paid");
    }

    function test_Attack3_TokensCreditedAtMostWhatThePaymentPaysFor() public {
        _deposit(node, 100 ether);
        // 100 MESH at 2 MESH per 1K tokens pays for 50,000 tokens; the node claims a million.
        (uint256 settled,) = _settleAs(node, _signed(NODE_PK, 0, _receipt(node, node, 1_000_000, 100 ether)));
        vm.assertEq(settled, 1, "paid");
        INodeRegistry.Reputation memory rep = nodes.reputationOf(node);
        vm.assertEq(uint256(rep.tokensServed), 50_000, "credited what was paid for");
        vm.assertEq(uint256(rep.receiptsSettled), 1, "counted");
        vm.assertEq(settlement.earnings(node), 30 ether, "self-dealing keeps 30%: it costs 70%");
    }

    function test_Attack3_CheapUnapprovedModelPricesNothing() public {
        // A self-dealer proposes a model at 1 wei per 1K so dust would pay for many tokens: the
        // curator never approved it, so its receipts are refused.
        vm.startPrank(attacker);
        IModelRegistry.ModelSpec memory spec = _spec("cheap", "bafkreicheap");
        spec.pricePer1k = 1;
        uint256 cheap = models.propose(spec);
        vm.stopPrank();
        _deposit(node, 1 ether);
        ISettlement.UsageReceipt memory r = _receipt(node, node, type(uint128).max, 1 ether);
        r.modelId = cheap;
        vm.recordLogs();
        (uint256 settled,) = _settleAs(node, _signed(NODE_PK, 0, r));
        vm.assertEq(settled, 0, "refused");
        vm.assertEq(
            _rejection(vm.getRecordedLogs(), 0),
            abi.encodeWithSelector(ISettlement.ModelNotBillable.selector, cheap),
            "rejection reason"
        );
        vm.assertEq(uint256(nodes.reputationOf(node).tokensServed), 0, "no reputation");
    }

    // ------------------------------------------------------------ 4. one node's overflow reverts the batch

    function test_Attack4_OverflowingNodeIsSkippedAndOthersSettle() public {
        // A curator-approved model at 1 wei per 1K tokens, and enough escrow to fill tokensServed.
        vm.prank(publisher);
        IModelRegistry.ModelSpec memory spec = _spec("cheap", "bafkreicheap");
        spec.pricePer1k = 1;
        uint256 cheap = models.propose(spec);
        vm.prank(curator);
        models.approve(cheap);
        uint256 big = uint256(type(uint128).max) / 1000 + 1;
        _deposit(payer, 2 * big);
        _deposit(payer2, 10 ether);

        ISettlement.SignedReceipt[] memory batch = new ISettlement.SignedReceipt[](3);
        ISettlement.UsageReceipt memory full = _receipt(payer, node, type(uint128).max, big);
        full.modelId = cheap;
        batch[0] = _signed(PAYER_PK, NODE_PK, full);
        ISettlement.UsageReceipt memory more = _receipt(payer2, node, 2 ** 127, 1 ether);
        more.modelId = cheap;
        batch[1] = _signed(PAYER2_PK, NODE_PK, more); // the node's sum would pass 2^128
        batch[2] = _signed(PAYER2_PK, NODE2_PK, _receipt(payer2, node2, 1000, 2 ether));

        vm.recordLogs();
        vm.prank(stranger);
        (uint256 settled, uint256 paid) = settlement.settle(batch);
        vm.assertEq(settled, 2, "was: the whole batch reverted");
        vm.assertEq(paid, big + 2 ether, "the first receipt and the other node's are paid");
        vm.assertEq(
            _rejection(vm.getRecordedLogs(), 1),
            abi.encodeWithSelector(ISettlement.ReputationOverflow.selector, node),
            "rejection reason"
        );
        vm.assertEq(uint256(nodes.reputationOf(node).tokensServed), type(uint128).max, "counter full");
        vm.assertEq(uint256(nodes.reputationOf(node2).tokensServed), 1000, "other node credited");

        // With the counter full, even a later batch only skips that node's receipt.
        vm.recordLogs();
        (settled,) = _settleAs(node, _signed(PAYER2_PK, 0, more));
        vm.assertEq(settled, 0, "still refused, never a revert");
    }

    // ------------------------------------------------------------ 5. lowering a period

    function test_Attack5_LoweredUnbondingPeriodCannotShortenPendingUnbonding() public {
        _stake(node, 1000 ether);
        vm.prank(node);
        nodes.requestUnbond(1000 ether);
        uint256 readyAt = block.timestamp + UNBONDING_PERIOD;
        vm.prank(admin);
        nodes.setUnbondingPeriod(1 hours);
        _stake(node, 1);
        vm.prank(node);
        nodes.requestUnbond(1);
        vm.assertEq(uint256(nodes.getNode(node).unbondingReadyAt), readyAt, "was: now + 1 hour");
        vm.warp(block.timestamp + 1 hours);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.UnbondingNotReady.selector, readyAt, block.timestamp));
        vm.prank(node);
        nodes.withdrawStake();
        vm.prank(slasher);
        vm.assertGt(nodes.slash(node, 1000 ether, "caught"), 0, "still slashable");
    }

    function test_Attack5_LoweredUnlockDelayCannotShortenPendingUnlock() public {
        _deposit(payer, 10 ether);
        vm.prank(payer);
        settlement.requestUnlock(5 ether);
        uint256 readyAt = block.timestamp + UNLOCK_DELAY;
        vm.prank(admin);
        settlement.setUnlockDelay(10 minutes);
        vm.prank(payer);
        settlement.requestUnlock(10 ether);
        vm.assertEq(uint256(settlement.escrowOf(payer).unlockReadyAt), readyAt, "was: now + 10 minutes");
    }

    // ------------------------------------------------------------ 6. squatting names and CIDs

    function test_Attack6_FrontRunProposalIsReleasedByDeprecation() public {
        IModelRegistry.ModelSpec memory spec = _spec("qwen-coder", "bafkreiqwen");
        // The attacker copies the pending proposal from the mempool and lands first.
        vm.prank(attacker);
        uint256 squat = models.propose(spec);
        vm.expectRevert(abi.encodeWithSelector(IModelRegistry.NameOwnedByAnother.selector, spec.name, attacker));
        vm.prank(publisher);
        models.propose(spec);

        vm.expectEmit(true, false, false, true, address(models));
        emit IModelRegistry.CidReleased(squat, spec.cid);
        vm.expectEmit(true, false, false, true, address(models));
        emit IModelRegistry.NameReleased(spec.name, attacker);
        vm.prank(curator);
        models.deprecate(squat);
        vm.assertEq(models.billablePrice(squat), 0, "the squat never bills");
        vm.assertEq(models.nameOwner(keccak256(bytes(spec.name))), address(0), "name free");
        vm.assertEq(models.modelIdByCid(keccak256(bytes(spec.cid))), 0, "cid free");

        vm.prank(publisher);
        uint256 real = models.propose(spec);
        vm.prank(curator);
        models.approve(real);
        vm.assertEq(models.getModel(real).publisher, publisher, "the real publisher owns it");
        vm.assertEq(models.nameOwner(keccak256(bytes(spec.name))), publisher, "and the name");
    }

    function test_Attack6_ApprovedEntriesKeepTheirCidAndName() public {
        // modelId (gemma-3-270m) was approved in setUp: deprecating it releases nothing.
        vm.prank(curator);
        models.deprecate(modelId);
        vm.assertEq(models.modelIdByCid(keccak256("bafkreigemma")), modelId, "cid kept");
        vm.assertEq(models.nameOwner(keccak256("gemma-3-270m")), publisher, "name kept");
        vm.assertEq(models.billablePrice(modelId), PRICE_PER_1K, "still billable for work done before");
    }

    function test_Attack6_NameReleasedOnlyWhenNoVersionIsLive() public {
        vm.startPrank(attacker);
        uint256 a = models.propose(_spec("squat", "bafkreia"));
        uint256 b = models.propose(_spec("squat", "bafkreib"));
        vm.stopPrank();
        vm.startPrank(curator);
        models.deprecate(a);
        vm.assertEq(models.nameOwner(keccak256("squat")), attacker, "a live version holds the name");
        models.deprecate(b);
        vm.stopPrank();
        vm.assertEq(models.nameOwner(keccak256("squat")), address(0), "released with the last one");
    }

    // ------------------------------------------------------------ 7. dodging a fixed slash

    function test_Attack7_WithdrawingFirstCannotDodgeASlash() public {
        _stake(node, 500 ether);
        vm.prank(node);
        nodes.requestUnbond(500 ether);
        vm.warp(block.timestamp + UNBONDING_PERIOD);
        INodeRegistry.Node memory n = nodes.getNode(node);
        uint256 ordered = n.stake + n.unbonding;
        // The operator sees slash(stake + unbonding) coming and withdraws the matured part first.
        vm.prank(node);
        nodes.withdrawStake();
        vm.prank(slasher);
        uint256 taken = nodes.slash(node, ordered, "fraud");
        vm.assertEq(taken, MIN_STAKE, "was: reverted and took nothing; now takes what is left");
        vm.assertEq(nodes.getNode(node).stake, 0, "nothing left");
    }

    // ------------------------------------------------------------ 8. inactive nodes

    function test_Attack8_SlashedAndDeregisteredNodeIsNotPaid() public {
        _deposit(payer, 10 ether);
        vm.prank(slasher);
        nodes.slash(node, MIN_STAKE, "fraud");
        vm.prank(node);
        nodes.deregister();
        vm.recordLogs();
        (uint256 settled,) = _settleAs(node, _signed(PAYER_PK, 0, _receipt(payer, node, 1000, 2 ether)));
        vm.assertEq(settled, 0, "was: paid and credited");
        vm.assertEq(
            _rejection(vm.getRecordedLogs(), 0),
            abi.encodeWithSelector(ISettlement.NodeNotPayable.selector, node),
            "rejection reason"
        );
        vm.assertEq(settlement.earnings(node), 0, "no unslashable earnings");
    }

    // ------------------------------------------------------------ 9. admin takes the stakes

    function test_Attack9_AdminCannotRedirectSlashedStake() public {
        (bool ok,) = address(nodes).call(abi.encodeWithSignature("setSlashRecipient(address)", admin));
        vm.assertFalse(ok, "no setter: the slash recipient is fixed");
        vm.prank(admin);
        nodes.slash(node, MIN_STAKE, "admin");
        vm.assertEq(token.balanceOf(admin), 0, "admin got nothing");
        vm.assertEq(token.balanceOf(address(vault)), MIN_STAKE, "the vault got it");
        vm.prank(admin);
        settlement.setTreasury(ISettlement.Treasury({developers: admin, infrastructure: admin, research: admin}));
        vm.assertEq(settlement.hysaVault(), address(vault), "nor the vault's 20%");
    }

    // ------------------------------------------------------------ 10. zero payer

    function test_Attack10_JunkSignatureNeverRecoversZeroPayer() public {
        ISettlement.RequestAuth memory auth = ISettlement.RequestAuth({
            payer: address(0),
            node: node,
            modelId: modelId,
            maxTokens: 256,
            maxPricePer1k: PRICE_PER_1K,
            nonce: 1,
            deadline: block.timestamp + 60
        });
        ISettlement.Signature memory junk = ISettlement.Signature({v: 29, r: bytes32(uint256(1)), s: bytes32(0)});
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ZeroAddress.selector));
        settlement.recoverRequestSigner(auth, junk);
        auth.payer = payer;
        vm.expectRevert(abi.encodeWithSelector(ISettlement.InvalidRequestSignature.selector));
        settlement.recoverRequestSigner(auth, junk);
    }

    function test_Attack10_ZeroPayerReceiptIsRefused() public {
        ISettlement.SignedReceipt memory s;
        s.receipt = _receipt(address(0), node, 1000, 2 ether);
        s.payerSig = ISettlement.Signature({v: 29, r: bytes32(uint256(1)), s: bytes32(0)});
        vm.recordLogs();
        (uint256 settled,) = _settleAs(node, s);
        vm.assertEq(settled, 0, "refused");
        vm.assertEq(
            _rejection(vm.getRecordedLogs(), 0),
            abi.encodeWithSelector(ISettlement.InvalidPayerSignature.selector, address(0)),
            "rejection reason"
        );
    }
}
