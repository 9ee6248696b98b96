// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Base} from "./utils/Base.sol";
import {Vm} from "./utils/Vm.sol";
import {Settlement} from "../src/Settlement.sol";
import {ISettlement} from "../src/interfaces/ISettlement.sol";
import {INodeRegistry} from "../src/interfaces/INodeRegistry.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";

/// @notice Unit tests for Settlement: escrow, settlement, the split, earnings, admin and EIP-712 views.
contract SettlementTest is Base {
    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 internal constant RECEIPT_TYPEHASH = keccak256(
        "UsageReceipt(address payer,address node,uint256 modelId,uint256 cumulativeTokens,uint256 cumulativeAmount,uint256 expiry)"
    );
    bytes32 internal constant AUTH_TYPEHASH = keccak256(
        "RequestAuth(address payer,address node,uint256 modelId,uint256 maxTokens,uint256 maxPricePer1k,uint256 nonce,uint256 deadline)"
    );
    bytes32 internal constant PERMIT_TYPEHASH =
        keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)");
    /// @dev secp256k1 group order.
    uint256 internal constant SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;

    function setUp() public override {
        super.setUp();
        _registerNode(node, "node-1");
    }

    // ================================================================ helpers

    function _balance(address who) internal view returns (uint256) {
        return settlement.escrowOf(who).balance;
    }

    function _count(Vm.Log[] memory logs, bytes32 topic0, address emitter) internal pure returns (uint256 n) {
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].emitter == emitter && logs[i].topics.length > 0 && logs[i].topics[0] == topic0) ++n;
        }
    }

    /// @dev Asserts the batch's single bad receipt at `index` is rejected with exactly `reason` by
    ///      both policies: settleStrict reverts with it, settle skips it with a ReceiptRejected event.
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
        (uint256[] memory indexes, bytes[] memory reasons) = _rejections(vm.getRecordedLogs());
        vm.assertEq(reasons.length, 1, "one rejection");
        vm.assertEq(indexes[0], index, "rejected index");
        vm.assertEq(reasons[0], reason, "rejection reason bytes");
        vm.assertEq(settled, batch.length - 1, "others settled");
    }

    function _permitDigest(address owner, address spender, uint256 value, uint256 nonce, uint256 deadline)
        internal
        view
        returns (bytes32)
    {
        bytes32 structHash = keccak256(abi.encode(PERMIT_TYPEHASH, owner, spender, value, nonce, deadline));
        return keccak256(abi.encodePacked(hex"1901", token.DOMAIN_SEPARATOR(), structHash));
    }

    function _domainSeparator(address verifyingContract) internal view returns (bytes32) {
        return keccak256(
            abi.encode(
                DOMAIN_TYPEHASH, keccak256("llm-mesh Settlement"), keccak256("1"), block.chainid, verifyingContract
            )
        );
    }

    // ================================================================ deposit

    function test_deposit_creditsEscrowAndPullsTokens() public {
        _mint(payer, 10 ether);
        vm.startPrank(payer);
        token.approve(address(settlement), 10 ether);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit ISettlement.EscrowDeposited(payer, payer, 4 ether, 4 ether);
        settlement.deposit(4 ether);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit ISettlement.EscrowDeposited(payer, payer, 6 ether, 10 ether);
        settlement.deposit(6 ether);
        vm.stopPrank();

        vm.assertEq(_balance(payer), 10 ether, "escrow balance");
        vm.assertEq(token.balanceOf(payer), 0, "payer tokens pulled");
        vm.assertEq(token.balanceOf(address(settlement)), 10 ether, "settlement holds escrow");
    }

    function test_RevertWhen_DepositZero() public {
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ZeroAmount.selector));
        settlement.deposit(0);
    }

    function test_RevertWhen_DepositWithoutAllowance() public {
        _mint(payer, 1 ether);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, address(settlement), 0, 1 ether)
        );
        settlement.deposit(1 ether);
        vm.assertEq(_balance(payer), 0, "nothing credited");
    }

    function test_RevertWhen_DepositOverflowsUint128() public {
        uint256 tooMuch = uint256(type(uint128).max) + 1;
        _mint(payer, tooMuch);
        vm.startPrank(payer);
        token.approve(address(settlement), tooMuch);
        vm.expectRevert(abi.encodeWithSelector(SafeCast.SafeCastOverflowedUintDowncast.selector, uint8(128), tooMuch));
        settlement.deposit(tooMuch);
        vm.stopPrank();
    }

    function test_depositFor_fundsAnotherPayer() public {
        _mint(stranger, 3 ether);
        vm.startPrank(stranger);
        token.approve(address(settlement), 3 ether);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit ISettlement.EscrowDeposited(payer, stranger, 3 ether, 3 ether);
        settlement.depositFor(payer, 3 ether);
        vm.stopPrank();

        vm.assertEq(_balance(payer), 3 ether, "payer credited");
        vm.assertEq(_balance(stranger), 0, "funder not credited");
        vm.assertEq(token.balanceOf(stranger), 0, "funder paid");
    }

    function test_RevertWhen_DepositForZeroAddress() public {
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ZeroAddress.selector));
        settlement.depositFor(address(0), 1 ether);
    }

    function test_RevertWhen_DepositForZeroAmount() public {
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ZeroAmount.selector));
        settlement.depositFor(payer, 0);
    }

    function test_depositWithPermit_approvesAndDeposits() public {
        _mint(payer, 5 ether);
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(PAYER_PK, _permitDigest(payer, address(settlement), 5 ether, token.nonces(payer), deadline));

        vm.prank(payer);
        settlement.depositWithPermit(5 ether, deadline, v, r, s);

        vm.assertEq(_balance(payer), 5 ether, "escrow");
        vm.assertEq(token.nonces(payer), 1, "permit consumed");
        vm.assertEq(token.allowance(payer, address(settlement)), 0, "allowance spent");
        vm.assertEq(token.balanceOf(payer), 0, "tokens pulled");
    }

    function test_depositWithPermit_frontRunPermitStillDeposits() public {
        _mint(payer, 5 ether);
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(PAYER_PK, _permitDigest(payer, address(settlement), 5 ether, token.nonces(payer), deadline));

        // Someone copies the permit from the mempool and submits it first.
        vm.prank(stranger);
        token.permit(payer, address(settlement), 5 ether, deadline, v, r, s);
        vm.assertEq(token.allowance(payer, address(settlement)), 5 ether, "front-run set allowance");

        vm.prank(payer);
        settlement.depositWithPermit(5 ether, deadline, v, r, s);
        vm.assertEq(_balance(payer), 5 ether, "deposit went through");
        vm.assertEq(token.balanceOf(payer), 0, "tokens pulled");
    }

    function test_RevertWhen_DepositWithPermitInvalidAndNoAllowance() public {
        _mint(payer, 5 ether);
        uint256 deadline = block.timestamp + 1 hours;
        // Signed by the wrong key: the permit fails and there is no allowance to fall back on.
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(PAYER2_PK, _permitDigest(payer, address(settlement), 5 ether, token.nonces(payer), deadline));
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, address(settlement), 0, 5 ether)
        );
        settlement.depositWithPermit(5 ether, deadline, v, r, s);
    }

    function test_RevertWhen_DepositWithPermitZero() public {
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ZeroAmount.selector));
        settlement.depositWithPermit(0, block.timestamp, 27, bytes32(0), bytes32(0));
    }

    // ================================================================ unlock / withdraw

    function test_requestUnlock_setsAmountAndReadyAt() public {
        _deposit(payer, 10 ether);
        uint64 readyAt = uint64(block.timestamp + UNLOCK_DELAY);
        vm.expectEmit(true, false, false, true, address(settlement));
        emit ISettlement.EscrowUnlockRequested(payer, 4 ether, readyAt);
        vm.prank(payer);
        settlement.requestUnlock(4 ether);

        ISettlement.Escrow memory e = settlement.escrowOf(payer);
        vm.assertEq(e.balance, 10 ether, "balance untouched");
        vm.assertEq(e.unlocking, 4 ether, "unlocking");
        vm.assertEq(e.unlockReadyAt, readyAt, "readyAt");
    }

    function test_requestUnlock_replacesPendingUnlockAndRestartsDelay() public {
        _deposit(payer, 10 ether);
        vm.prank(payer);
        settlement.requestUnlock(4 ether);
        vm.warp(block.timestamp + 1 hours);
        vm.prank(payer);
        settlement.requestUnlock(7 ether);
        ISettlement.Escrow memory e = settlement.escrowOf(payer);
        vm.assertEq(e.unlocking, 7 ether, "replaced amount");
        vm.assertEq(e.unlockReadyAt, block.timestamp + UNLOCK_DELAY, "restarted delay");
    }

    function test_RevertWhen_RequestUnlockZero() public {
        _deposit(payer, 1 ether);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ZeroAmount.selector));
        settlement.requestUnlock(0);
    }

    function test_RevertWhen_RequestUnlockExceedsBalance() public {
        _deposit(payer, 1 ether);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.InsufficientEscrow.selector, payer, 1 ether + 1, 1 ether));
        settlement.requestUnlock(1 ether + 1);
    }

    function test_cancelUnlock_clearsUnlock() public {
        _deposit(payer, 10 ether);
        vm.prank(payer);
        settlement.requestUnlock(4 ether);
        vm.expectEmit(true, false, false, true, address(settlement));
        emit ISettlement.EscrowUnlockCancelled(payer);
        vm.prank(payer);
        settlement.cancelUnlock();

        ISettlement.Escrow memory e = settlement.escrowOf(payer);
        vm.assertEq(e.unlocking, 0, "unlocking cleared");
        vm.assertEq(e.unlockReadyAt, 0, "readyAt cleared");
        vm.assertEq(e.balance, 10 ether, "balance kept");

        vm.warp(block.timestamp + UNLOCK_DELAY);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.NoUnlockPending.selector, payer));
        settlement.withdraw();
    }

    function test_RevertWhen_CancelUnlockWithoutPending() public {
        _deposit(payer, 1 ether);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.NoUnlockPending.selector, payer));
        settlement.cancelUnlock();
    }

    function test_RevertWhen_WithdrawWithoutPending() public {
        _deposit(payer, 1 ether);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.NoUnlockPending.selector, payer));
        settlement.withdraw();
    }

    function test_withdraw_exactlyAtReadyAt() public {
        _deposit(payer, 10 ether);
        vm.prank(payer);
        settlement.requestUnlock(4 ether);
        uint256 readyAt = block.timestamp + UNLOCK_DELAY;

        vm.warp(readyAt - 1);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnlockNotReady.selector, readyAt, readyAt - 1));
        settlement.withdraw();

        vm.warp(readyAt);
        vm.expectEmit(true, false, false, true, address(settlement));
        emit ISettlement.EscrowWithdrawn(payer, 4 ether);
        vm.prank(payer);
        uint256 amount = settlement.withdraw();

        vm.assertEq(amount, 4 ether, "withdrawn");
        vm.assertEq(token.balanceOf(payer), 4 ether, "payer received");
        ISettlement.Escrow memory e = settlement.escrowOf(payer);
        vm.assertEq(e.balance, 6 ether, "rest stays");
        vm.assertEq(e.unlocking, 0, "unlock cleared");
        vm.assertEq(e.unlockReadyAt, 0, "readyAt cleared");
    }

    function test_withdraw_paysWhatSettlementLeft() public {
        _deposit(payer, 10 ether);
        vm.prank(payer);
        settlement.requestUnlock(8 ether);
        // The node settles during the delay: unlocking escrow is still spendable.
        _settleAs(node, _signed(PAYER_PK, 0, _receipt(payer, node, 2500, 5 ether)));
        vm.assertEq(_balance(payer), 5 ether, "settled from escrow");

        vm.warp(block.timestamp + UNLOCK_DELAY);
        vm.prank(payer);
        uint256 amount = settlement.withdraw();
        vm.assertEq(amount, 5 ether, "min(unlocking, balance)");
        vm.assertEq(token.balanceOf(payer), 5 ether, "payer received");
        vm.assertEq(_balance(payer), 0, "escrow empty");
    }

    function test_withdraw_paysUnlockingWhenBalanceCovers() public {
        _deposit(payer, 10 ether);
        vm.prank(payer);
        settlement.requestUnlock(4 ether);
        _settleAs(node, _signed(PAYER_PK, 0, _receipt(payer, node, 2500, 5 ether)));

        vm.warp(block.timestamp + UNLOCK_DELAY);
        vm.prank(payer);
        uint256 amount = settlement.withdraw();
        vm.assertEq(amount, 4 ether, "unlocking amount");
        vm.assertEq(_balance(payer), 1 ether, "remainder stays in escrow");
    }

    function test_withdraw_paysNothingWhenSettlementSpentAll() public {
        _deposit(payer, 10 ether);
        vm.prank(payer);
        settlement.requestUnlock(10 ether);
        _settleAs(node, _signed(PAYER_PK, 0, _receipt(payer, node, 5000, 10 ether)));

        vm.warp(block.timestamp + UNLOCK_DELAY);
        vm.prank(payer);
        uint256 amount = settlement.withdraw();
        vm.assertEq(amount, 0, "nothing left");
        vm.assertEq(token.balanceOf(payer), 0, "no transfer");
        vm.assertEq(settlement.escrowOf(payer).unlockReadyAt, 0, "unlock cleared");
    }

    function test_setUnlockDelay_keepsPendingReadyAt() public {
        _deposit(payer, 10 ether);
        vm.prank(payer);
        settlement.requestUnlock(1 ether);
        uint256 readyAt = block.timestamp + UNLOCK_DELAY;
        vm.prank(admin);
        settlement.setUnlockDelay(30 days);
        vm.assertEq(settlement.escrowOf(payer).unlockReadyAt, readyAt, "pending readyAt kept");
        vm.warp(readyAt);
        vm.prank(payer);
        vm.assertEq(settlement.withdraw(), 1 ether, "withdrawn at old readyAt");
    }

    // ================================================================ settle

    function test_settle_paysDeltaOnly() public {
        _deposit(payer, 100 ether);
        (uint256 settled, uint256 paid) = _settleAs(node, _signed(PAYER_PK, 0, _receipt(payer, node, 1000, 2 ether)));
        vm.assertEq(settled, 1, "first settled");
        vm.assertEq(paid, 2 ether, "first paid");

        (settled, paid) = _settleAs(node, _signed(PAYER_PK, 0, _receipt(payer, node, 2500, 5 ether)));
        vm.assertEq(settled, 1, "second settled");
        vm.assertEq(paid, 3 ether, "second pays only the delta");

        ISettlement.Channel memory c = settlement.channelOf(payer, node);
        vm.assertEq(c.amount, 5 ether, "channel amount");
        vm.assertEq(c.tokens, 2500, "channel tokens");
        vm.assertEq(_balance(payer), 95 ether, "escrow charged the cumulative total once");
        vm.assertEq(settlement.earnings(node), 1.5 ether, "node 30% of 5");
    }

    function test_settle_deltaWithinOneBatch() public {
        _deposit(payer, 100 ether);
        ISettlement.SignedReceipt[] memory batch = new ISettlement.SignedReceipt[](2);
        batch[0] = _signed(PAYER_PK, 0, _receipt(payer, node, 1000, 2 ether));
        batch[1] = _signed(PAYER_PK, 0, _receipt(payer, node, 2500, 5 ether));
        vm.prank(node);
        (uint256 settled, uint256 paid) = settlement.settle(batch);
        vm.assertEq(settled, 2, "both settled");
        vm.assertEq(paid, 5 ether, "2 + 3");
        vm.assertEq(_balance(payer), 95 ether, "escrow");
        vm.assertEq(nodes.reputationOf(node).receiptsSettled, 2, "two receipts counted");
    }

    function test_settle_creditsReputation() public {
        _deposit(payer, 100 ether);
        _deposit(payer2, 100 ether);
        vm.warp(block.timestamp + 1 hours);
        _settleAs(node, _signed(PAYER_PK, 0, _receipt(payer, node, 1000, 2 ether)));
        INodeRegistry.Reputation memory rep = nodes.reputationOf(node);
        vm.assertEq(rep.tokensServed, 1000, "tokens");
        vm.assertEq(rep.volumePaid, 2 ether, "volume");
        vm.assertEq(rep.receiptsSettled, 1, "receipts");
        vm.assertEq(rep.lastSettledAt, block.timestamp, "lastSettledAt");

        vm.warp(block.timestamp + 1 hours);
        ISettlement.SignedReceipt[] memory batch = new ISettlement.SignedReceipt[](2);
        batch[0] = _signed(PAYER_PK, 0, _receipt(payer, node, 2600, 5.2 ether));
        batch[1] = _signed(PAYER2_PK, 0, _receipt(payer2, node, 1000, 2 ether));
        vm.expectEmit(true, false, false, true, address(nodes));
        emit INodeRegistry.SettlementRecorded(node, 2600, 5.2 ether, 2);
        vm.prank(node);
        settlement.settle(batch);

        rep = nodes.reputationOf(node);
        vm.assertEq(rep.tokensServed, 3600, "tokens accumulate deltas");
        vm.assertEq(rep.volumePaid, 7.2 ether, "volume accumulates deltas");
        vm.assertEq(rep.receiptsSettled, 3, "receipts");
        vm.assertEq(rep.lastSettledAt, block.timestamp, "lastSettledAt updated");
    }

    function test_settle_creditsOnlyTokensPaidForAndCountsOnlyReceiptsWorth1k() public {
        _deposit(payer, 100 ether);
        uint64 before = nodes.reputationOf(node).lastSettledAt;
        vm.warp(block.timestamp + 1 hours);
        // 1.5 MESH at 2 MESH per 1K tokens pays for 750 tokens; the receipt claims 5,000.
        _settleAs(node, _signed(PAYER_PK, 0, _receipt(payer, node, 5000, 1.5 ether)));
        INodeRegistry.Reputation memory rep = nodes.reputationOf(node);
        vm.assertEq(rep.tokensServed, 750, "tokens bounded by the payment");
        vm.assertEq(rep.volumePaid, 1.5 ether, "volume");
        vm.assertEq(rep.receiptsSettled, 0, "under 1K tokens' worth: not counted");
        vm.assertEq(rep.lastSettledAt, before, "and no recency");
        vm.assertEq(settlement.channelOf(payer, node).tokens, 5000, "the channel keeps the receipt's count");
    }

    function test_settle_splitsPayment() public {
        _deposit(payer, 100 ether);
        uint256 amount = 10 ether + 7; // odd wei so rounding matters
        uint256 vaultBefore = token.balanceOf(address(vault));
        vm.expectEmit(true, false, false, true, address(settlement));
        emit ISettlement.PaymentSplit(node, amount, 3 ether + 2, 2.5 ether + 1, 2 ether + 1, 1.5 ether + 1, 1 ether + 2);
        _settleAs(node, _signed(PAYER_PK, 0, _receipt(payer, node, 5000, amount)));

        vm.assertEq(settlement.earnings(node), 3 ether + 2, "node 30%");
        vm.assertEq(settlement.earnings(developers), 2.5 ether + 1, "developers 25%");
        vm.assertEq(token.balanceOf(address(vault)) - vaultBefore, 2 ether + 1, "vault 20% transferred");
        vm.assertEq(settlement.earnings(address(vault)), 0, "vault part not credited as earnings");
        vm.assertEq(settlement.earnings(infrastructure), 1.5 ether + 1, "infrastructure 15%");
        vm.assertEq(settlement.earnings(research), 1 ether + 2, "research 10% + remainder");
        vm.assertEq(
            settlement.earnings(node) + settlement.earnings(developers) + settlement.earnings(infrastructure)
                + settlement.earnings(research) + token.balanceOf(address(vault)) - vaultBefore,
            amount,
            "parts sum to the payment"
        );
        // Escrow left = what the settlement contract still holds minus unwithdrawn earnings.
        vm.assertEq(
            token.balanceOf(address(settlement)),
            _balance(payer) + amount - (2 ether + 1),
            "settlement holds escrow + earnings"
        );
    }

    function test_settle_emitsReceiptSettled() public {
        _deposit(payer, 100 ether);
        vm.expectEmit(true, true, true, true, address(settlement));
        emit ISettlement.ReceiptSettled(payer, node, modelId, 1000, 2 ether);
        _settleAs(node, _signed(PAYER_PK, 0, _receipt(payer, node, 1000, 2 ether)));
        vm.expectEmit(true, true, true, true, address(settlement));
        emit ISettlement.ReceiptSettled(payer, node, modelId, 400, 1 ether);
        _settleAs(node, _signed(PAYER_PK, 0, _receipt(payer, node, 1400, 3 ether)));
    }

    function test_settle_emptyBatchPaysNothing() public {
        ISettlement.SignedReceipt[] memory batch = new ISettlement.SignedReceipt[](0);
        (uint256 settled, uint256 paid) = settlement.settle(batch);
        vm.assertEq(settled, 0, "settled");
        vm.assertEq(paid, 0, "paid");
        vm.assertEq(settlement.settleStrict(batch), 0, "strict paid");
        vm.assertEq(nodes.reputationOf(node).receiptsSettled, 0, "no reputation");
    }

    function test_settle_batchManyPayersTwoNodes() public {
        _registerNode(node2, "node-2");
        uint256[4] memory pks = [PAYER_PK, PAYER2_PK, uint256(0x1001), uint256(0x1002)];
        address[4] memory payers;
        for (uint256 i; i < 4; ++i) {
            payers[i] = vm.addr(pks[i]);
            _deposit(payers[i], 100 ether);
        }

        // Runs: node (3 receipts), node2 (2), node again (1: a second receipt of payer 1).
        ISettlement.SignedReceipt[] memory batch = new ISettlement.SignedReceipt[](6);
        batch[0] = _signed(pks[0], NODE_PK, _receipt(payers[0], node, 500, 1 ether + 1));
        batch[1] = _signed(pks[1], NODE_PK, _receipt(payers[1], node, 1000, 2 ether + 3));
        batch[2] = _signed(pks[2], NODE_PK, _receipt(payers[2], node, 1500, 3 ether + 7));
        batch[3] = _signed(pks[0], NODE2_PK, _receipt(payers[0], node2, 2000, 4 ether + 11));
        batch[4] = _signed(pks[3], NODE2_PK, _receipt(payers[3], node2, 2500, 5 ether + 13));
        batch[5] = _signed(pks[1], NODE_PK, _receipt(payers[1], node, 1200, 2.5 ether + 3));

        uint256 run1 = 6 ether + 11;
        uint256 run2 = 9 ether + 24;
        uint256 run3 = 0.5 ether;
        uint256 vaultBefore = token.balanceOf(address(vault));

        vm.recordLogs();
        vm.prank(stranger); // a relayer: node signatures are in the batch
        (uint256 settled, uint256 paid) = settlement.settle(batch);
        Vm.Log[] memory logs = vm.getRecordedLogs();

        vm.assertEq(settled, 6, "all settled");
        vm.assertEq(paid, run1 + run2 + run3, "total paid");
        vm.assertEq(_count(logs, ISettlement.PaymentSplit.selector, address(settlement)), 3, "one split per run");
        vm.assertEq(_count(logs, ISettlement.ReceiptSettled.selector, address(settlement)), 6, "receipt events");
        vm.assertEq(_count(logs, INodeRegistry.SettlementRecorded.selector, address(nodes)), 3, "reputation per run");

        ISettlement.Split memory s1 = settlement.split(run1);
        ISettlement.Split memory s2 = settlement.split(run2);
        ISettlement.Split memory s3 = settlement.split(run3);
        vm.assertEq(settlement.earnings(node), s1.node + s3.node, "node earnings");
        vm.assertEq(settlement.earnings(node2), s2.node, "node2 earnings");
        vm.assertEq(settlement.earnings(developers), s1.developers + s2.developers + s3.developers, "developers");
        vm.assertEq(
            settlement.earnings(infrastructure), s1.infrastructure + s2.infrastructure + s3.infrastructure, "infra"
        );
        vm.assertEq(settlement.earnings(research), s1.research + s2.research + s3.research, "research");
        vm.assertEq(token.balanceOf(address(vault)) - vaultBefore, s1.hysa + s2.hysa + s3.hysa, "vault");

        vm.assertEq(_balance(payers[0]), 100 ether - (1 ether + 1) - (4 ether + 11), "payer0 charged twice");
        vm.assertEq(_balance(payers[1]), 100 ether - (2.5 ether + 3), "payer1 charged cumulative once");
        vm.assertEq(_balance(payers[2]), 100 ether - (3 ether + 7), "payer2");
        vm.assertEq(_balance(payers[3]), 100 ether - (5 ether + 13), "payer3");

        INodeRegistry.Reputation memory r1 = nodes.reputationOf(node);
        // Two of node's four receipts pay for less than 1K tokens (1 MESH + 1 wei and 0.5 MESH at
        // 2 MESH per 1K): they are paid and credited, but not counted as receipts.
        vm.assertEq(r1.receiptsSettled, 2, "node receipts worth 1K tokens or more");
        vm.assertEq(r1.volumePaid, run1 + run3, "node volume");
        vm.assertEq(r1.tokensServed, 500 + 1200 + 1500, "node tokens");
        INodeRegistry.Reputation memory r2 = nodes.reputationOf(node2);
        vm.assertEq(r2.receiptsSettled, 2, "node2 receipts");
        vm.assertEq(r2.volumePaid, run2, "node2 volume");
        vm.assertEq(r2.tokensServed, 4500, "node2 tokens");
    }

    function test_settle_skipsBadReceiptAndPaysGoodOnes() public {
        address payer3 = vm.addr(0x1003);
        _deposit(payer, 10 ether);
        _deposit(payer2, 1 ether);
        _deposit(payer3, 10 ether);
        ISettlement.SignedReceipt[] memory batch = new ISettlement.SignedReceipt[](3);
        batch[0] = _signed(PAYER_PK, 0, _receipt(payer, node, 1000, 2 ether));
        batch[1] = _signed(PAYER2_PK, 0, _receipt(payer2, node, 2500, 5 ether)); // underfunded
        batch[2] = _signed(0x1003, 0, _receipt(payer3, node, 1500, 3 ether));

        bytes memory reason = abi.encodeWithSelector(ISettlement.InsufficientEscrow.selector, payer2, 5 ether, 1 ether);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit ISettlement.ReceiptRejected(payer2, node, 1, reason);
        vm.recordLogs();
        vm.prank(node);
        (uint256 settled, uint256 paid) = settlement.settle(batch);

        (uint256[] memory indexes, bytes[] memory reasons) = _rejections(vm.getRecordedLogs());
        vm.assertEq(reasons.length, 1, "one rejection");
        vm.assertEq(indexes[0], 1, "index");
        vm.assertEq(reasons[0], reason, "reason is the ABI-encoded custom error");
        vm.assertEq(bytes4(reasons[0]), ISettlement.InsufficientEscrow.selector, "selector");

        vm.assertEq(settled, 2, "good ones settled");
        vm.assertEq(paid, 5 ether, "good ones paid");
        vm.assertEq(_balance(payer), 8 ether, "payer charged");
        vm.assertEq(_balance(payer2), 1 ether, "underfunded payer untouched");
        vm.assertEq(settlement.channelOf(payer2, node).amount, 0, "bad channel untouched");
        vm.assertEq(_balance(payer3), 7 ether, "payer3 charged");
        vm.assertEq(nodes.reputationOf(node).receiptsSettled, 2, "reputation counts good ones");
        vm.assertEq(settlement.earnings(node), 1.5 ether, "node 30% of 5");
    }

    function test_RevertWhen_SettleStrictHasBadReceipt() public {
        _deposit(payer, 10 ether);
        _deposit(payer2, 1 ether);
        ISettlement.SignedReceipt[] memory batch = new ISettlement.SignedReceipt[](2);
        batch[0] = _signed(PAYER_PK, 0, _receipt(payer, node, 1000, 2 ether));
        batch[1] = _signed(PAYER2_PK, 0, _receipt(payer2, node, 2500, 5 ether));
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.InsufficientEscrow.selector, payer2, 5 ether, 1 ether));
        settlement.settleStrict(batch);

        vm.assertEq(_balance(payer), 10 ether, "good receipt not paid either");
        vm.assertEq(settlement.channelOf(payer, node).amount, 0, "channel untouched");
        vm.assertEq(settlement.earnings(node), 0, "no earnings");
        vm.assertEq(nodes.reputationOf(node).receiptsSettled, 0, "no reputation");
    }

    function test_settleStrict_paysWholeBatch() public {
        _deposit(payer, 10 ether);
        _deposit(payer2, 10 ether);
        ISettlement.SignedReceipt[] memory batch = new ISettlement.SignedReceipt[](2);
        batch[0] = _signed(PAYER_PK, 0, _receipt(payer, node, 1000, 2 ether));
        batch[1] = _signed(PAYER2_PK, 0, _receipt(payer2, node, 2500, 5 ether));
        vm.prank(node);
        uint256 paid = settlement.settleStrict(batch);
        vm.assertEq(paid, 7 ether, "total");
        vm.assertEq(settlement.earnings(node), 2.1 ether, "node part");
        vm.assertEq(nodes.reputationOf(node).receiptsSettled, 2, "reputation");
    }

    function test_settle_byNodeNeedsNoNodeSignature() public {
        _deposit(payer, 10 ether);
        ISettlement.SignedReceipt memory s = _signed(PAYER_PK, 0, _receipt(payer, node, 1000, 2 ether));
        vm.assertEq(s.nodeSig.r, bytes32(0), "no node signature");
        (uint256 settled, uint256 paid) = _settleAs(node, s);
        vm.assertEq(settled, 1, "settled");
        vm.assertEq(paid, 2 ether, "paid");
    }

    function test_settle_byThirdPartyNeedsNodeSignature() public {
        _deposit(payer, 10 ether);
        ISettlement.UsageReceipt memory r = _receipt(payer, node, 1000, 2 ether);
        _assertRejected(
            _one(_signed(PAYER_PK, 0, r)),
            stranger,
            0,
            abi.encodeWithSelector(ISettlement.InvalidNodeSignature.selector, node)
        );
        (uint256 settled, uint256 paid) = _settleAs(stranger, _signed(PAYER_PK, NODE_PK, r));
        vm.assertEq(settled, 1, "settled with node signature");
        vm.assertEq(paid, 2 ether, "paid");
        vm.assertEq(settlement.earnings(node), 0.6 ether, "node, not submitter, earns");
        vm.assertEq(settlement.earnings(stranger), 0, "submitter earns nothing");
    }

    function test_RevertWhen_NodeSignatureFromWrongKey() public {
        _deposit(payer, 10 ether);
        _assertRejected(
            _one(_signed(PAYER_PK, NODE2_PK, _receipt(payer, node, 1000, 2 ether))),
            stranger,
            0,
            abi.encodeWithSelector(ISettlement.InvalidNodeSignature.selector, node)
        );
    }

    function test_RevertWhen_PayerSignatureInvalid() public {
        _deposit(payer, 10 ether);
        _assertRejected(
            _one(_signed(PAYER2_PK, 0, _receipt(payer, node, 1000, 2 ether))),
            node,
            0,
            abi.encodeWithSelector(ISettlement.InvalidPayerSignature.selector, payer)
        );
        vm.assertEq(_balance(payer), 10 ether, "escrow untouched");
    }

    function test_RevertWhen_PayerSignatureEmpty() public {
        _deposit(payer, 10 ether);
        ISettlement.SignedReceipt memory s;
        s.receipt = _receipt(payer, node, 1000, 2 ether);
        _assertRejected(_one(s), node, 0, abi.encodeWithSelector(ISettlement.InvalidPayerSignature.selector, payer));
    }

    function test_RevertWhen_NodeNeverRegistered() public {
        _deposit(payer, 10 ether);
        _assertRejected(
            _one(_signed(PAYER_PK, NODE2_PK, _receipt(payer, node2, 1000, 2 ether))),
            node2,
            0,
            abi.encodeWithSelector(ISettlement.NodeNotPayable.selector, node2)
        );
    }

    function test_settle_paysDeregisteredNodeWithinOneUnbondingPeriod() public {
        _deposit(payer, 10 ether);
        vm.prank(node);
        nodes.deregister();
        vm.warp(block.timestamp + UNBONDING_PERIOD);
        ISettlement.UsageReceipt memory r = _receipt(payer, node, 1000, 2 ether);
        (uint256 settled, uint256 paid) = _settleAs(node, _signed(PAYER_PK, 0, r));
        vm.assertEq(settled, 1, "a node that left still settles what it served");
        vm.assertEq(paid, 2 ether, "paid");
    }

    function test_RevertWhen_NodeLeftMoreThanOneUnbondingPeriodAgo() public {
        _deposit(payer, 10 ether);
        vm.prank(node);
        nodes.deregister();
        vm.warp(block.timestamp + UNBONDING_PERIOD + 1);
        _assertRejected(
            _one(_signed(PAYER_PK, 0, _receipt(payer, node, 1000, 2 ether))),
            node,
            0,
            abi.encodeWithSelector(ISettlement.NodeNotPayable.selector, node)
        );
    }

    function test_RevertWhen_ModelNeverApproved() public {
        _deposit(payer, 10 ether);
        vm.prank(publisher);
        uint256 pending = models.propose(_spec("pending", "bafkreipending"));
        ISettlement.UsageReceipt memory r = _receipt(payer, node, 1000, 2 ether);
        r.modelId = pending;
        _assertRejected(
            _one(_signed(PAYER_PK, NODE_PK, r)),
            node,
            0,
            abi.encodeWithSelector(ISettlement.ModelNotBillable.selector, pending)
        );
        r.modelId = 999; // no such model
        _assertRejected(
            _one(_signed(PAYER_PK, NODE_PK, r)),
            node,
            0,
            abi.encodeWithSelector(ISettlement.ModelNotBillable.selector, 999)
        );
    }

    function test_settle_paysDeprecatedModelThatWasApproved() public {
        _deposit(payer, 10 ether);
        vm.prank(curator);
        models.deprecate(modelId);
        (uint256 settled,) = _settleAs(node, _signed(PAYER_PK, 0, _receipt(payer, node, 1000, 2 ether)));
        vm.assertEq(settled, 1, "work done before deprecation is paid");
    }

    function test_RevertWhen_StaleReceipt() public {
        _deposit(payer, 10 ether);
        _settleAs(node, _signed(PAYER_PK, 0, _receipt(payer, node, 1000, 2 ether)));
        // Same amount (a replay) and a lower one are both stale.
        _assertRejected(
            _one(_signed(PAYER_PK, 0, _receipt(payer, node, 1000, 2 ether))),
            node,
            0,
            abi.encodeWithSelector(ISettlement.StaleReceipt.selector, payer, node, 2 ether, 2 ether)
        );
        _assertRejected(
            _one(_signed(PAYER_PK, 0, _receipt(payer, node, 2000, 1 ether))),
            node,
            0,
            abi.encodeWithSelector(ISettlement.StaleReceipt.selector, payer, node, 1 ether, 2 ether)
        );
        vm.assertEq(_balance(payer), 8 ether, "nothing more paid");
    }

    function test_RevertWhen_StaleZeroAmountReceipt() public {
        _deposit(payer, 10 ether);
        _assertRejected(
            _one(_signed(PAYER_PK, 0, _receipt(payer, node, 0, 0))),
            node,
            0,
            abi.encodeWithSelector(ISettlement.StaleReceipt.selector, payer, node, 0, 0)
        );
    }

    function test_RevertWhen_InconsistentTokens() public {
        _deposit(payer, 10 ether);
        _settleAs(node, _signed(PAYER_PK, 0, _receipt(payer, node, 1000, 2 ether)));
        _assertRejected(
            _one(_signed(PAYER_PK, 0, _receipt(payer, node, 999, 3 ether))),
            node,
            0,
            abi.encodeWithSelector(ISettlement.InconsistentTokens.selector, payer, node, 999, 1000)
        );
        uint256 tooMany = uint256(type(uint128).max) + 1;
        _assertRejected(
            _one(_signed(PAYER_PK, 0, _receipt(payer, node, tooMany, 3 ether))),
            node,
            0,
            abi.encodeWithSelector(ISettlement.InconsistentTokens.selector, payer, node, tooMany, 1000)
        );
        // Same token count with a higher amount is allowed (the delta carries zero tokens).
        (, uint256 paid) = _settleAs(node, _signed(PAYER_PK, 0, _receipt(payer, node, 1000, 3 ether)));
        vm.assertEq(paid, 1 ether, "equal token count accepted");
    }

    function test_RevertWhen_AmountOutOfRange() public {
        _deposit(payer, 10 ether);
        uint256 tooMuch = uint256(type(uint128).max) + 1;
        _assertRejected(
            _one(_signed(PAYER_PK, 0, _receipt(payer, node, 1000, tooMuch))),
            node,
            0,
            abi.encodeWithSelector(ISettlement.AmountOutOfRange.selector, tooMuch)
        );
    }

    function test_RevertWhen_InsufficientEscrow() public {
        _deposit(payer, 1 ether);
        _assertRejected(
            _one(_signed(PAYER_PK, 0, _receipt(payer, node, 1000, 2 ether))),
            node,
            0,
            abi.encodeWithSelector(ISettlement.InsufficientEscrow.selector, payer, 2 ether, 1 ether)
        );
        vm.assertEq(_balance(payer), 1 ether, "no partial payment");
        vm.assertEq(settlement.channelOf(payer, node).amount, 0, "channel untouched");
    }

    function test_RevertWhen_InsufficientEscrowForDelta() public {
        _deposit(payer, 3 ether);
        _settleAs(node, _signed(PAYER_PK, 0, _receipt(payer, node, 1000, 2 ether)));
        // Delta 2 ether against 1 ether left: the error reports the delta, not the cumulative.
        _assertRejected(
            _one(_signed(PAYER_PK, 0, _receipt(payer, node, 2000, 4 ether))),
            node,
            0,
            abi.encodeWithSelector(ISettlement.InsufficientEscrow.selector, payer, 2 ether, 1 ether)
        );
    }

    function test_RevertWhen_ReceiptExpired() public {
        _deposit(payer, 10 ether);
        ISettlement.UsageReceipt memory r = _receipt(payer, node, 1000, 2 ether);
        ISettlement.SignedReceipt memory s = _signed(PAYER_PK, 0, r);
        vm.warp(r.expiry + 1);
        _assertRejected(
            _one(s), node, 0, abi.encodeWithSelector(ISettlement.ReceiptExpired.selector, r.expiry, r.expiry + 1)
        );
    }

    // ================================================================ earnings

    function test_withdrawEarnings_paysAndZeroes() public {
        _deposit(payer, 10 ether);
        _settleAs(node, _signed(PAYER_PK, 0, _receipt(payer, node, 1000, 2 ether)));

        vm.expectEmit(true, false, false, true, address(settlement));
        emit ISettlement.EarningsWithdrawn(node, 0.6 ether);
        vm.prank(node);
        uint256 amount = settlement.withdrawEarnings();
        vm.assertEq(amount, 0.6 ether, "node amount");
        vm.assertEq(token.balanceOf(node), 0.6 ether, "node received");
        vm.assertEq(settlement.earnings(node), 0, "zeroed");

        vm.prank(developers);
        vm.assertEq(settlement.withdrawEarnings(), 0.5 ether, "developers");
        vm.prank(infrastructure);
        vm.assertEq(settlement.withdrawEarnings(), 0.3 ether, "infrastructure");
        vm.prank(research);
        vm.assertEq(settlement.withdrawEarnings(), 0.2 ether, "research");
        vm.assertEq(token.balanceOf(address(settlement)), 8 ether, "only escrow left");

        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.NothingToWithdraw.selector, node));
        settlement.withdrawEarnings();
    }

    function test_RevertWhen_NothingToWithdraw() public {
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.NothingToWithdraw.selector, stranger));
        settlement.withdrawEarnings();
    }

    // ================================================================ admin

    function _treasury(address dev, address infra, address res) internal pure returns (ISettlement.Treasury memory) {
        return ISettlement.Treasury({developers: dev, infrastructure: infra, research: res});
    }

    function test_setTreasury_redirectsFuturePaymentsButNeverTheVault() public {
        address dev2 = address(0xD2);
        address infra2 = address(0xD4);
        address res2 = address(0xD5);
        vm.expectEmit(true, true, true, true, address(settlement));
        emit ISettlement.TreasuryChanged(dev2, infra2, res2);
        vm.prank(admin);
        settlement.setTreasury(_treasury(dev2, infra2, res2));

        ISettlement.Treasury memory t = settlement.treasury();
        vm.assertEq(t.developers, dev2, "developers");
        vm.assertEq(t.infrastructure, infra2, "infra");
        vm.assertEq(t.research, res2, "research");

        _deposit(payer, 10 ether);
        _settleAs(node, _signed(PAYER_PK, 0, _receipt(payer, node, 1000, 2 ether)));
        vm.assertEq(settlement.earnings(dev2), 0.5 ether, "new developers");
        vm.assertEq(token.balanceOf(address(vault)), 0.4 ether, "the vault is fixed");
        vm.assertEq(settlement.earnings(infra2), 0.3 ether, "new infra");
        vm.assertEq(settlement.earnings(res2), 0.2 ether, "new research");
        vm.assertEq(settlement.earnings(developers), 0, "old developers get nothing");
    }

    function test_RevertWhen_SetTreasuryZeroAddress() public {
        address a = address(0xD2);
        vm.startPrank(admin);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ZeroAddress.selector));
        settlement.setTreasury(_treasury(address(0), a, a));
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ZeroAddress.selector));
        settlement.setTreasury(_treasury(a, address(0), a));
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ZeroAddress.selector));
        settlement.setTreasury(_treasury(a, a, address(0)));
        vm.stopPrank();
        vm.assertEq(settlement.treasury().developers, developers, "unchanged");
    }

    function test_RevertWhen_SetTreasuryNotAdmin() public {
        address a = address(0xD2);
        bytes32 adminRole = settlement.DEFAULT_ADMIN_ROLE();
        vm.prank(stranger);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, stranger, adminRole)
        );
        settlement.setTreasury(_treasury(a, a, a));
    }

    function test_setUnlockDelay_acceptsBothBounds() public {
        uint256 minDelay = settlement.MIN_UNLOCK_DELAY();
        uint256 maxDelay = settlement.MAX_UNLOCK_DELAY();
        vm.assertEq(minDelay, 10 minutes, "min");
        vm.assertEq(maxDelay, 30 days, "max");
        vm.expectEmit(false, false, false, true, address(settlement));
        emit ISettlement.UnlockDelayChanged(UNLOCK_DELAY, minDelay);
        vm.prank(admin);
        settlement.setUnlockDelay(minDelay);
        vm.assertEq(settlement.unlockDelay(), minDelay, "min accepted");
        vm.prank(admin);
        settlement.setUnlockDelay(maxDelay);
        vm.assertEq(settlement.unlockDelay(), maxDelay, "max accepted");

        _deposit(payer, 1 ether);
        vm.prank(payer);
        settlement.requestUnlock(1 ether);
        vm.assertEq(settlement.escrowOf(payer).unlockReadyAt, block.timestamp + maxDelay, "new delay applies");
    }

    function test_RevertWhen_SetUnlockDelayBelowMinimum() public {
        uint256 minDelay = settlement.MIN_UNLOCK_DELAY();
        uint256 maxDelay = settlement.MAX_UNLOCK_DELAY();
        vm.prank(admin);
        vm.expectRevert(
            abi.encodeWithSelector(
                ISettlement.ParameterOutOfBounds.selector, "unlockDelay", minDelay - 1, minDelay, maxDelay
            )
        );
        settlement.setUnlockDelay(minDelay - 1);
        vm.assertEq(settlement.unlockDelay(), UNLOCK_DELAY, "unchanged");
    }

    function test_RevertWhen_SetUnlockDelayAboveMaximum() public {
        uint256 minDelay = settlement.MIN_UNLOCK_DELAY();
        uint256 maxDelay = settlement.MAX_UNLOCK_DELAY();
        vm.prank(admin);
        vm.expectRevert(
            abi.encodeWithSelector(
                ISettlement.ParameterOutOfBounds.selector, "unlockDelay", maxDelay + 1, minDelay, maxDelay
            )
        );
        settlement.setUnlockDelay(maxDelay + 1);
    }

    function test_RevertWhen_SetUnlockDelayNotAdmin() public {
        bytes32 adminRole = settlement.DEFAULT_ADMIN_ROLE();
        vm.prank(stranger);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, stranger, adminRole)
        );
        settlement.setUnlockDelay(1 hours);
    }

    function test_RevertWhen_ConstructedWithZeroTreasury() public {
        address a = address(0xD2);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ZeroAddress.selector));
        new Settlement(IERC20(address(token)), nodes, admin, _treasury(a, address(0), a), UNLOCK_DELAY);
    }

    function test_RevertWhen_ConstructedWithDelayOutOfBounds() public {
        address a = address(0xD2);
        vm.expectRevert(
            abi.encodeWithSelector(ISettlement.ParameterOutOfBounds.selector, "unlockDelay", 0, 10 minutes, 30 days)
        );
        new Settlement(IERC20(address(token)), nodes, admin, _treasury(a, a, a), 0);
    }

    function test_constructor_wiresRolesAndParameters() public view {
        vm.assertEq(address(settlement.token()), address(token), "token");
        vm.assertEq(address(settlement.nodes()), address(nodes), "nodes");
        vm.assertTrue(settlement.hasRole(settlement.DEFAULT_ADMIN_ROLE(), admin), "admin role");
        vm.assertFalse(settlement.hasRole(settlement.DEFAULT_ADMIN_ROLE(), stranger), "stranger not admin");
        vm.assertEq(settlement.unlockDelay(), UNLOCK_DELAY, "delay");
        vm.assertEq(settlement.hysaVault(), address(vault), "vault is the registry's slash recipient");
        vm.assertEq(address(settlement.models()), address(models), "models from the registry");
    }

    // ================================================================ EIP-712 views

    function test_typehashes_matchSpec() public view {
        vm.assertEq(settlement.USAGE_RECEIPT_TYPEHASH(), RECEIPT_TYPEHASH, "receipt typehash");
        vm.assertEq(settlement.REQUEST_AUTH_TYPEHASH(), AUTH_TYPEHASH, "auth typehash");
    }

    function test_hashReceipt_matchesEip712Spec() public {
        ISettlement.UsageReceipt memory r = ISettlement.UsageReceipt({
            payer: payer,
            node: node,
            modelId: 7,
            cumulativeTokens: 12_345,
            cumulativeAmount: 3 ether,
            expiry: 1_800_000_000
        });
        bytes32 structHash = keccak256(
            abi.encode(RECEIPT_TYPEHASH, r.payer, r.node, r.modelId, r.cumulativeTokens, r.cumulativeAmount, r.expiry)
        );
        bytes32 expected = keccak256(abi.encodePacked(hex"1901", _domainSeparator(address(settlement)), structHash));
        vm.assertEq(settlement.hashReceipt(r), expected, "receipt digest");

        // The domain follows the chain id.
        vm.chainId(4242);
        bytes32 onOtherChain = keccak256(abi.encodePacked(hex"1901", _domainSeparator(address(settlement)), structHash));
        vm.assertEq(settlement.hashReceipt(r), onOtherChain, "digest on another chain");
        vm.assertTrue(onOtherChain != expected, "chain id is in the domain");
    }

    function test_hashRequestAuth_matchesEip712Spec() public view {
        ISettlement.RequestAuth memory a = ISettlement.RequestAuth({
            payer: payer,
            node: node,
            modelId: 3,
            maxTokens: 512,
            maxPricePer1k: 2 ether,
            nonce: 99,
            deadline: 1_800_000_000
        });
        bytes32 structHash = keccak256(
            abi.encode(AUTH_TYPEHASH, a.payer, a.node, a.modelId, a.maxTokens, a.maxPricePer1k, a.nonce, a.deadline)
        );
        bytes32 expected = keccak256(abi.encodePacked(hex"1901", _domainSeparator(address(settlement)), structHash));
        vm.assertEq(settlement.hashRequestAuth(a), expected, "auth digest");
    }

    function test_eip712Domain_reportsNameVersionChainAndContract() public view {
        (
            bytes1 fields,
            string memory name,
            string memory version,
            uint256 chainId,
            address verifyingContract,
            bytes32 salt,
            uint256[] memory extensions
        ) = settlement.eip712Domain();
        vm.assertEq(uint256(uint8(fields)), 0x0f, "fields: name, version, chainId, verifyingContract");
        vm.assertEq(keccak256(bytes(name)), keccak256("llm-mesh Settlement"), "name");
        vm.assertEq(keccak256(bytes(version)), keccak256("1"), "version");
        vm.assertEq(chainId, block.chainid, "chainId");
        vm.assertEq(verifyingContract, address(settlement), "verifyingContract");
        vm.assertEq(salt, bytes32(0), "salt");
        vm.assertEq(extensions.length, 0, "extensions");
    }

    function test_recoverRequestSigner_returnsSigner() public view {
        ISettlement.RequestAuth memory a = ISettlement.RequestAuth({
            payer: payer,
            node: node,
            modelId: modelId,
            maxTokens: 256,
            maxPricePer1k: PRICE_PER_1K,
            nonce: 1,
            deadline: block.timestamp + 60
        });
        ISettlement.Signature memory sig = _sign(PAYER_PK, settlement.hashRequestAuth(a));
        vm.assertEq(settlement.recoverRequestSigner(a, sig), payer, "payer recovered");

        // Any field change changes the signer.
        a.maxTokens = 257;
        vm.assertTrue(settlement.recoverRequestSigner(a, sig) != payer, "tampered auth");
    }

    function test_RevertWhen_recoverRequestSignerGetsInvalidSignature() public {
        ISettlement.RequestAuth memory a = ISettlement.RequestAuth({
            payer: payer,
            node: node,
            modelId: modelId,
            maxTokens: 256,
            maxPricePer1k: PRICE_PER_1K,
            nonce: 1,
            deadline: block.timestamp + 60
        });
        ISettlement.Signature memory empty;
        vm.expectRevert(abi.encodeWithSelector(ISettlement.InvalidRequestSignature.selector));
        settlement.recoverRequestSigner(a, empty);

        ISettlement.Signature memory sig = _sign(PAYER_PK, settlement.hashRequestAuth(a));
        ISettlement.Signature memory highS =
            ISettlement.Signature({v: sig.v == 27 ? 28 : 27, r: sig.r, s: bytes32(SECP256K1_N - uint256(sig.s))});
        vm.expectRevert(abi.encodeWithSelector(ISettlement.InvalidRequestSignature.selector));
        settlement.recoverRequestSigner(a, highS);

        // A zero payer is refused outright: no signature can make `signer == auth.payer` true.
        a.payer = address(0);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ZeroAddress.selector));
        settlement.recoverRequestSigner(a, empty);
    }

    // ================================================================ split

    function test_split_exactParts() public view {
        ISettlement.Split memory p = settlement.split(100);
        vm.assertEq(p.node, 30, "node");
        vm.assertEq(p.developers, 25, "developers");
        vm.assertEq(p.hysa, 20, "hysa");
        vm.assertEq(p.infrastructure, 15, "infrastructure");
        vm.assertEq(p.research, 10, "research");

        // 9: floors 2/2/1/1 leave 3 for research.
        p = settlement.split(9);
        vm.assertEq(p.node, 2, "node 9");
        vm.assertEq(p.developers, 2, "developers 9");
        vm.assertEq(p.hysa, 1, "hysa 9");
        vm.assertEq(p.infrastructure, 1, "infrastructure 9");
        vm.assertEq(p.research, 3, "research takes the remainder");

        p = settlement.split(0);
        vm.assertEq(p.node + p.developers + p.hysa + p.infrastructure + p.research, 0, "zero");
    }

    function test_split_bpsSumToWhole() public view {
        vm.assertEq(
            settlement.NODE_BPS() + settlement.DEVELOPERS_BPS() + settlement.HYSA_BPS()
                + settlement.INFRASTRUCTURE_BPS() + settlement.RESEARCH_BPS(),
            settlement.BPS(),
            "basis points"
        );
    }

    function testFuzz_split_sumsExactly(uint256 amount) public view {
        ISettlement.Split memory p = settlement.split(amount);
        vm.assertEq(p.node + p.developers + p.hysa + p.infrastructure + p.research, amount, "sum");
        vm.assertEq(p.node, _floorBps(amount, 3000), "node");
        vm.assertEq(p.developers, _floorBps(amount, 2500), "developers");
        vm.assertEq(p.hysa, _floorBps(amount, 2000), "hysa");
        vm.assertEq(p.infrastructure, _floorBps(amount, 1500), "infrastructure");
        vm.assertGe(p.research, _floorBps(amount, 1000), "research at least 10%");
        vm.assertLe(p.research, _floorBps(amount, 1000) + 4, "research remainder at most 4 wei");
    }

    function test_split_exactForMaxUint() public view {
        ISettlement.Split memory p = settlement.split(type(uint256).max);
        vm.assertEq(p.node, _floorBps(type(uint256).max, 3000), "node");
        vm.assertEq(p.node + p.developers + p.hysa + p.infrastructure + p.research, type(uint256).max, "sum");
    }

    /// @dev floor(amount * bps / 10_000) without overflowing for any uint256.
    function _floorBps(uint256 amount, uint256 bps) private pure returns (uint256) {
        return amount / 10_000 * bps + (amount % 10_000) * bps / 10_000;
    }

    // ================================================================ fuzz

    function testFuzz_settle_paysDeltaOnly(uint256 first, uint256 second, uint256 tokens1, uint256 tokens2) public {
        first = bound(first, 1, 1e30);
        second = bound(second, first + 1, 2e30);
        tokens1 = bound(tokens1, 0, 1e12);
        tokens2 = bound(tokens2, tokens1, 2e12);
        _deposit(payer, second);

        ISettlement.SignedReceipt memory older = _signed(PAYER_PK, 0, _receipt(payer, node, tokens1, first));
        (, uint256 paid) = _settleAs(node, older);
        vm.assertEq(paid, first, "first pays its amount");
        (, paid) = _settleAs(node, _signed(PAYER_PK, 0, _receipt(payer, node, tokens2, second)));
        vm.assertEq(paid, second - first, "second pays the delta");
        // Replaying the first receipt pays nothing.
        uint256 settled;
        (settled, paid) = _settleAs(node, older);
        vm.assertEq(settled + paid, 0, "replay pays nothing");

        vm.assertEq(_balance(payer), 0, "escrow charged exactly the cumulative amount");
        vm.assertEq(
            settlement.earnings(node),
            settlement.split(first).node + settlement.split(second - first).node,
            "node earnings"
        );
        uint256 credited1 = _min(tokens1, first * 1000 / PRICE_PER_1K);
        uint256 credited2 = _min(tokens2 - tokens1, (second - first) * 1000 / PRICE_PER_1K);
        uint256 counted = (first >= PRICE_PER_1K ? 1 : 0) + (second - first >= PRICE_PER_1K ? 1 : 0);
        _assertReputation(node, credited1 + credited2, second, counted);
    }

    function _min(uint256 a, uint256 b) internal pure returns (uint256) {
        return a < b ? a : b;
    }

    function _assertReputation(address operator, uint256 tokens, uint256 volume, uint256 receipts) internal view {
        INodeRegistry.Reputation memory rep = nodes.reputationOf(operator);
        vm.assertEq(rep.volumePaid, volume, "volume");
        vm.assertEq(rep.tokensServed, tokens, "tokens");
        vm.assertEq(rep.receiptsSettled, receipts, "receipts");
    }

    function testFuzz_settle_cumulativeSequence(uint256 seed, uint256 steps) public {
        steps = bound(steps, 1, 8);
        uint256[] memory increments = new uint256[](steps);
        uint256 total;
        for (uint256 i; i < steps; ++i) {
            increments[i] = bound(uint256(keccak256(abi.encode(seed, i))), 1, 1e24);
            total += increments[i];
        }
        _deposit(payer, total);
        uint256 vaultBefore = token.balanceOf(address(vault));

        uint256 cumulative;
        uint256 cumulativeTokens;
        uint256 hysa;
        for (uint256 i; i < steps; ++i) {
            ISettlement.SignedReceipt memory previous =
                _signed(PAYER_PK, 0, _receipt(payer, node, cumulativeTokens, cumulative));
            cumulative += increments[i];
            cumulativeTokens += bound(uint256(keccak256(abi.encode(seed, i, "t"))), 0, 1e6);
            ISettlement.SignedReceipt[] memory batch = new ISettlement.SignedReceipt[](2);
            batch[0] = _signed(PAYER_PK, 0, _receipt(payer, node, cumulativeTokens, cumulative));
            batch[1] = previous; // an older receipt after the newer one is stale
            vm.prank(node);
            (uint256 settled, uint256 paid) = settlement.settle(batch);
            vm.assertEq(settled, 1, "only the newest settles");
            vm.assertEq(paid, increments[i], "pays the increment");
            hysa += settlement.split(increments[i]).hysa;
            vm.assertEq(settlement.channelOf(payer, node).amount, cumulative, "channel follows cumulative");
            vm.assertEq(_balance(payer), total - cumulative, "escrow");
        }
        vm.assertEq(token.balanceOf(address(vault)) - vaultBefore, hysa, "vault got each hysa part");
        // Escrow is empty, so the contract holds exactly the unwithdrawn earnings.
        vm.assertEq(
            token.balanceOf(address(settlement)),
            settlement.earnings(node) + settlement.earnings(developers) + settlement.earnings(infrastructure)
                + settlement.earnings(research),
            "solvent: balance == earnings"
        );
        vm.assertEq(token.balanceOf(address(settlement)) + hysa, total, "nothing created or lost");
    }
}
