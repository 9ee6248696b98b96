// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Vm} from "../utils/Vm.sol";
import {Handler} from "./Handler.sol";
import {NetworkToken} from "../../src/NetworkToken.sol";
import {NodeRegistry} from "../../src/NodeRegistry.sol";
import {Settlement} from "../../src/Settlement.sol";
import {HysaVault} from "../../src/HysaVault.sol";
import {ISettlement} from "../../src/interfaces/ISettlement.sol";
import {INodeRegistry} from "../../src/interfaces/INodeRegistry.sol";

/// @notice Invariants of escrow, stake and settlement under random sequences of the Handler's
///         actions. Runs and depth come from foundry.toml ([invariant], [profile.ci.invariant]).
contract InvariantsTest {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    /// @dev forge reads the fuzzed selectors from a function of this name and ABI.
    struct FuzzSelector {
        address addr;
        bytes4[] selectors;
    }

    event log_named_uint(string key, uint256 val);

    Handler internal handler;
    NetworkToken internal token;
    NodeRegistry internal nodes;
    Settlement internal settlement;
    HysaVault internal vault;

    function setUp() public {
        handler = new Handler();
        (token, nodes, settlement, vault) = handler.deployment();
    }

    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    function targetSelectors() public view returns (FuzzSelector[] memory targets) {
        bytes4[] memory s = new bytes4[](17);
        s[0] = Handler.deposit.selector;
        s[1] = Handler.depositFor.selector;
        s[2] = Handler.requestUnlock.selector;
        s[3] = Handler.cancelUnlock.selector;
        s[4] = Handler.withdraw.selector;
        s[5] = Handler.warp.selector;
        s[6] = Handler.stake.selector;
        s[7] = Handler.requestUnbond.selector;
        s[8] = Handler.cancelUnbond.selector;
        s[9] = Handler.withdrawStake.selector;
        s[10] = Handler.slash.selector;
        s[11] = Handler.withdrawEarnings.selector;
        s[12] = Handler.settleByNode.selector;
        s[13] = Handler.settleByRelayer.selector;
        s[14] = Handler.settleMixed.selector;
        s[15] = Handler.settleStrict.selector;
        s[16] = Handler.vaultSandwich.selector;
        targets = new FuzzSelector[](1);
        targets[0] = FuzzSelector({addr: address(handler), selectors: s});
    }

    // ------------------------------------------------------------ invariants

    /// @notice Every property below holds after every call of every run. One campaign checks them
    ///         all, so each call is checked against each property, and the campaign's runs go to
    ///         depth instead of being split over one campaign per property.
    function invariant_allPropertiesHold() public view {
        _checkAll();
    }

    /// @notice Settlement holds exactly every escrow plus every unwithdrawn earning, and the
    ///         escrows are what the model says (deposits - withdrawals - payments).
    function property_escrowSolvent() public view {
        address[] memory payers = handler.payers();
        uint256 escrows;
        for (uint256 i; i < payers.length; ++i) {
            ISettlement.Escrow memory e = settlement.escrowOf(payers[i]);
            vm.assertEq(e.balance, handler.ghost_escrow(payers[i]), "escrow balance != model");
            vm.assertEq(e.unlocking, handler.ghost_unlocking(payers[i]), "unlocking != model");
            vm.assertEq(e.unlockReadyAt, handler.ghost_unlockReadyAt(payers[i]), "unlockReadyAt != model");
            escrows += e.balance;
        }
        address[] memory earners = handler.earners();
        uint256 owed;
        for (uint256 i; i < earners.length; ++i) {
            owed += settlement.earnings(earners[i]);
        }
        vm.assertEq(token.balanceOf(address(settlement)), escrows + owed, "settlement balance != escrows + earnings");
        vm.assertEq(
            escrows,
            handler.ghost_deposited() - handler.ghost_escrowWithdrawn() - handler.ghost_totalPaid(),
            "escrows != deposited - withdrawn - paid"
        );
    }

    /// @notice The registry holds exactly the stake and unbonding stake of every operator.
    function property_stakeSolvent() public view {
        address[] memory stakers = handler.stakers();
        uint256 held;
        for (uint256 i; i < stakers.length; ++i) {
            INodeRegistry.Node memory n = nodes.getNode(stakers[i]);
            vm.assertEq(n.stake, handler.ghost_stake(stakers[i]), "stake != model");
            vm.assertEq(n.unbonding, handler.ghost_unbonding(stakers[i]), "unbonding != model");
            vm.assertEq(n.unbondingReadyAt, handler.ghost_unbondReadyAt(stakers[i]), "unbondingReadyAt != model");
            held += n.stake + n.unbonding;
        }
        vm.assertEq(token.balanceOf(address(nodes)), held, "registry balance != stake + unbonding");
        vm.assertEq(
            held,
            handler.ghost_staked() - handler.ghost_stakeWithdrawn() - handler.ghost_slashed(),
            "stake != staked - withdrawn - slashed"
        );
        // Every listed operator is one of the stakers summed above.
        address[] memory ops = nodes.operatorsPage(0, 100);
        vm.assertEq(ops.length, handler.N_REGISTERED(), "operators");
        vm.assertEq(nodes.operatorCount(), handler.N_REGISTERED(), "operator count");
        for (uint256 i; i < ops.length; ++i) {
            vm.assertEq(ops[i], stakers[i], "operator order");
        }
    }

    /// @notice Everything payers paid (settle return values, and the escrow decrease measured
    ///         around each settle) is exactly what was credited or sent: node earnings + developers
    ///         + infrastructure + research + the vault's transfers.
    function property_splitSumsExactly() public view {
        uint256 paid = handler.ghost_totalPaid();
        vm.assertEq(handler.ghost_escrowSpent(), paid, "escrow decrease != settle return values");
        address[] memory registered = handler.registeredNodes();
        uint256 credited;
        for (uint256 i; i < registered.length; ++i) {
            credited += _credited(registered[i]);
        }
        (address dev, address infra, address res) = handler.treasuryAccounts();
        credited += _credited(dev) + _credited(infra) + _credited(res);
        vm.assertEq(credited + handler.ghost_vaultFromSettlement(), paid, "parts do not sum to the payments");
        // The node share is exactly floor(30%) of each run (per-run detail of every part below).
        for (uint256 i; i < registered.length; ++i) {
            vm.assertEq(
                _credited(registered[i]), handler.ghost_expNode(registered[i]), "node part != sum of floor(30%)"
            );
        }
    }

    /// @notice Each node's earnings are the sum over its runs of floor(30% of the run), and every
    ///         treasury part is the sum of its per-run floors (research takes the remainders).
    function property_nodeShareIsFloorOfEachRun() public view {
        address[] memory stakers = handler.stakers();
        for (uint256 i; i < stakers.length; ++i) {
            vm.assertEq(_credited(stakers[i]), handler.ghost_expNode(stakers[i]), "node part != sum of floor(30%)");
        }
        (address dev, address infra, address res) = handler.treasuryAccounts();
        vm.assertEq(_credited(dev), handler.ghost_expDevelopers(), "developers part");
        vm.assertEq(_credited(infra), handler.ghost_expInfrastructure(), "infrastructure part");
        vm.assertEq(_credited(res), handler.ghost_expResearch(), "research part");
        vm.assertEq(handler.ghost_vaultFromSettlement(), handler.ghost_expHysa(), "vault part");
        // Nothing else reaches the vault: its balance is the settlement parts plus slashed stake
        // (plus the rounding that same-block round trips left behind).
        vm.assertEq(
            token.balanceOf(address(vault)),
            handler.ghost_vaultFromSettlement() + handler.ghost_vaultFromSlash() + handler.ghost_vaultRoundTripLeft(),
            "vault balance"
        );
        vm.assertEq(handler.ghost_vaultFromSlash(), handler.ghost_slashed(), "slashed stake not in the vault");
    }

    /// @notice A channel's paid amount and token count never go down, and equal the newest
    ///         receipt the model paid.
    function property_paidNeverDecreases() public view {
        vm.assertEq(handler.ghost_channelDecreases(), 0, "a channel decreased");
        address[] memory payers = handler.payers();
        address[] memory stakers = handler.stakers();
        for (uint256 p; p < payers.length; ++p) {
            for (uint256 n; n < stakers.length; ++n) {
                ISettlement.Channel memory c = settlement.channelOf(payers[p], stakers[n]);
                vm.assertGe(c.amount, handler.lastSeenAmount(payers[p], stakers[n]), "channel amount decreased");
                vm.assertGe(c.tokens, handler.lastSeenTokens(payers[p], stakers[n]), "channel tokens decreased");
                vm.assertEq(c.amount, handler.ghost_channelAmount(payers[p], stakers[n]), "channel amount != model");
                vm.assertEq(c.tokens, handler.ghost_channelTokens(payers[p], stakers[n]), "channel tokens != model");
            }
        }
    }

    /// @notice Reputation counters are the sums of what was settled to (and slashed from) each node.
    function property_reputationMatchesPayments() public view {
        address[] memory stakers = handler.stakers();
        for (uint256 i; i < stakers.length; ++i) {
            INodeRegistry.Reputation memory rep = nodes.reputationOf(stakers[i]);
            vm.assertEq(rep.volumePaid, handler.ghost_paidToNode(stakers[i]), "volumePaid != payments");
            vm.assertEq(rep.tokensServed, handler.ghost_tokensToNode(stakers[i]), "tokensServed");
            vm.assertEq(rep.receiptsSettled, handler.ghost_receiptsToNode(stakers[i]), "receiptsSettled");
            vm.assertEq(rep.lastSettledAt, handler.ghost_lastSettledAt(stakers[i]), "lastSettledAt");
            vm.assertEq(rep.slashCount, handler.ghost_slashCount(stakers[i]), "slashCount");
            vm.assertEq(rep.totalSlashed, handler.ghost_slashedFrom(stakers[i]), "totalSlashed");
        }
    }

    /// @notice Income reaches vault holders over time: a deposit made right before a settle or a
    ///         slash and redeemed right after, in the same block, never gets back more than it put in.
    function property_noSameBlockVaultProfit() public view {
        vm.assertEq(handler.ghost_sandwichProfit(), 0, "a same-block vault round trip made a profit");
        vm.assertLe(vault.totalAssets(), token.balanceOf(address(vault)), "totalAssets counts unvested income");
    }

    /// @notice An escrow unlock is withdrawn only inside its window [readyAt, readyAt + UNLOCK_WINDOW],
    ///         so nodes always see it coming at least one unlock delay ahead.
    function property_unlockWithdrawnOnlyInWindow() public view {
        vm.assertEq(handler.ghost_withdrawOutsideWindow(), 0, "an unlock was withdrawn outside its window");
    }

    /// @notice Tokens are only moved, never created or lost: the holders' balances sum to the
    ///         supply, which changes only by the handler's mints.
    function property_tokenSupplyConserved() public view {
        address[] memory list = handler.holders();
        uint256 sum;
        for (uint256 i; i < list.length; ++i) {
            sum += token.balanceOf(list[i]);
        }
        vm.assertEq(token.totalSupply(), handler.ghost_supply(), "supply != minted");
        vm.assertEq(sum, token.totalSupply(), "balances do not sum to the supply");
    }

    /// @notice Every call did what the model predicted: return values, revert selectors,
    ///         ReceiptRejected reasons and amounts moved.
    function property_handlerMatchesModel() public view {
        if (handler.ghost_unexpected() != 0) {
            vm.assertEq(handler.lastUnexpected(), "", "a call differed from the model");
        }
    }

    /// @dev Prints the call summary of each run (visible with -vvv on failure).
    function afterInvariant() public {
        _summary();
    }

    // ------------------------------------------------------------ the handler really works

    /// @notice A short fixed sequence through the handler reaches every path: receipts are paid
    ///         and each rejection reason occurs, unlocks and unbonds complete, earnings leave.
    function test_handler_exercisesEveryPath() public {
        for (uint256 round; round < 12; ++round) {
            uint256 seed = uint256(keccak256(abi.encode("round", round)));
            handler.settleByNode(seed, 8);
            handler.settleByRelayer(seed >> 1, 8);
            handler.settleMixed(seed >> 2, 8);
            handler.settleStrict(seed >> 3, 1 + round % 3);
            handler.deposit(round, 10 ether);
            handler.depositFor(round, round + 1, 3 ether);
            handler.requestUnlock(round, seed);
            if (round % 4 == 3) handler.cancelUnlock(round);
            // In the window, early, or after the unlock lapsed.
            handler.withdraw(round, round % 2 == 0 ? 1 days + 1 hours : (round % 3 == 0 ? 0 : 3 days));
            handler.stake(round, 100 ether);
            handler.requestUnbond(round, seed);
            if (round % 5 == 4) handler.cancelUnbond(round);
            handler.withdrawStake(round + 1, round % 2 == 0 ? 14 days : 0);
            handler.slash(round, seed >> 4);
            handler.withdrawEarnings(round);
            handler.vaultSandwich(seed, 1000 ether + round * 7 ether);
            handler.warp(seed);
            _checkAll();
        }
        _summary();
        vm.assertGt(handler.ghost_settleCallsThatPaid(), 10, "settles that paid");
        vm.assertGt(handler.ghost_receiptsAccepted(), 50, "receipts paid");
        vm.assertGt(handler.ghost_runs(), handler.ghost_settleCallsThatPaid(), "several runs per batch");
        bytes4[9] memory reasons = [
            ISettlement.StaleReceipt.selector,
            ISettlement.InsufficientEscrow.selector,
            ISettlement.ReceiptExpired.selector,
            ISettlement.InvalidPayerSignature.selector,
            ISettlement.InvalidNodeSignature.selector,
            ISettlement.InconsistentTokens.selector,
            ISettlement.NodeNotPayable.selector,
            ISettlement.AmountOutOfRange.selector,
            ISettlement.ModelNotBillable.selector
        ];
        for (uint256 i; i < reasons.length; ++i) {
            vm.assertGt(handler.rejectedBy(reasons[i]), 0, "every rejection reason occurs");
        }
        string[12] memory done = [
            "settle",
            "settleStrict",
            "settleStrict.reverted",
            "withdraw",
            "cancelUnlock",
            "withdrawStake",
            "cancelUnbond",
            "slash",
            "withdrawEarnings",
            "depositFor",
            "vaultSandwich",
            "withdraw.lapsed"
        ];
        for (uint256 i; i < done.length; ++i) {
            vm.assertGt(handler.callCount(done[i]), 0, done[i]);
        }
    }

    function _checkAll() internal view {
        property_escrowSolvent();
        property_stakeSolvent();
        property_splitSumsExactly();
        property_nodeShareIsFloorOfEachRun();
        property_paidNeverDecreases();
        property_reputationMatchesPayments();
        property_tokenSupplyConserved();
        property_noSameBlockVaultProfit();
        property_unlockWithdrawnOnlyInWindow();
        property_handlerMatchesModel();
    }

    function _credited(address account) internal view returns (uint256) {
        return settlement.earnings(account) + handler.ghost_earningsWithdrawn(account);
    }

    function _summary() internal {
        emit log_named_uint("settle calls", handler.ghost_settleCalls());
        emit log_named_uint("settle calls that paid", handler.ghost_settleCallsThatPaid());
        emit log_named_uint("receipts paid", handler.ghost_receiptsAccepted());
        emit log_named_uint("receipts rejected", handler.ghost_receiptsRejected());
        emit log_named_uint("runs split", handler.ghost_runs());
        emit log_named_uint("total paid (wei)", handler.ghost_totalPaid());
        emit log_named_uint("rejected stale", handler.rejectedBy(ISettlement.StaleReceipt.selector));
        emit log_named_uint("rejected underfunded", handler.rejectedBy(ISettlement.InsufficientEscrow.selector));
        emit log_named_uint("rejected expired", handler.rejectedBy(ISettlement.ReceiptExpired.selector));
        emit log_named_uint("rejected bad payer sig", handler.rejectedBy(ISettlement.InvalidPayerSignature.selector));
        emit log_named_uint("rejected bad node sig", handler.rejectedBy(ISettlement.InvalidNodeSignature.selector));
        emit log_named_uint("rejected tokens", handler.rejectedBy(ISettlement.InconsistentTokens.selector));
        emit log_named_uint("rejected unpayable node", handler.rejectedBy(ISettlement.NodeNotPayable.selector));
        emit log_named_uint("rejected unbillable model", handler.rejectedBy(ISettlement.ModelNotBillable.selector));
        emit log_named_uint("rejected out of range", handler.rejectedBy(ISettlement.AmountOutOfRange.selector));
        string[16] memory names = [
            "deposit",
            "depositFor",
            "requestUnlock",
            "cancelUnlock",
            "withdraw",
            "withdraw.notReady",
            "withdraw.lapsed",
            "vaultSandwich",
            "stake",
            "requestUnbond",
            "cancelUnbond",
            "withdrawStake",
            "slash",
            "withdrawEarnings",
            "settleStrict",
            "settleStrict.reverted"
        ];
        for (uint256 i; i < names.length; ++i) {
            emit log_named_uint(names[i], handler.callCount(names[i]));
        }
        emit log_named_uint("unexpected outcomes", handler.ghost_unexpected());
    }
}
