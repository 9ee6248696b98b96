// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Base} from "../utils/Base.sol";
import {Vm} from "../utils/Vm.sol";
import {NetworkToken} from "../../src/NetworkToken.sol";
import {NodeRegistry} from "../../src/NodeRegistry.sol";
import {Settlement} from "../../src/Settlement.sol";
import {HysaVault} from "../../src/HysaVault.sol";
import {ISettlement} from "../../src/interfaces/ISettlement.sol";
import {INodeRegistry} from "../../src/interfaces/INodeRegistry.sol";

/// @notice Drives the deployed marketplace with bounded, mostly successful actions from actors that
///         hold private keys, and keeps an independent model (ghost variables) of what every call
///         should have done. It never reverts on purpose: a call that reverts when the model says it
///         must succeed (or the reverse) is counted in `ghost_unexpected`, which the invariants pin
///         to zero, because `fail_on_revert = false` would otherwise hide it.
/// @dev Deploys the Base fixture itself (its constructor runs `setUp`), so the invariant test only
///      reads addresses from here. `setUp` stays callable but is not among the fuzzed selectors.
contract Handler is Base {
    uint256 internal constant NODE3_PK = 0xC0DE5;
    /// @dev Staked but never registered: unknown to settlement, still counted in the registry.
    uint256 internal constant OUTSIDER_PK = 0x0B5E;
    uint256 internal constant PAYER3_PK = 0xFEED;
    uint256 internal constant PAYER4_PK = 0xBEEF;

    uint256 public constant N_PAYERS = 4;
    uint256 public constant N_NODES = 4; // indexes 0..2 registered, 3 = outsider
    uint256 public constant N_REGISTERED = 3;
    uint256 internal constant MAX_BATCH = 8;
    uint256 internal constant INITIAL_ESCROW = 100 ether;
    uint256 internal constant INITIAL_WALLET = 1000 ether;

    // Receipt kinds; kinds below K_REPLAY are well-formed receipts (16 of 26), the rest each aim
    // at one rejection reason of Settlement._apply.
    uint256 internal constant K_REPLAY = 16;
    uint256 internal constant K_STALE = 17;
    uint256 internal constant K_UNDERFUNDED = 18;
    uint256 internal constant K_EXPIRED = 19;
    uint256 internal constant K_BAD_PAYER_SIG = 20;
    uint256 internal constant K_BAD_NODE_SIG = 21;
    uint256 internal constant K_INCONSISTENT_TOKENS = 22;
    uint256 internal constant K_UNKNOWN_NODE = 23;
    uint256 internal constant K_OUT_OF_RANGE = 24;
    uint256 internal constant K_UNBILLABLE_MODEL = 25;
    uint256 internal constant N_KINDS = 26;

    uint256 internal constant MODE_NODE = 0; // a node submits mostly its own receipts
    uint256 internal constant MODE_RELAYER = 1; // a third party submits, node signatures needed
    uint256 internal constant MODE_MIXED = 2; // a node submits receipts of any node

    address public relayer = address(0x7E1A);
    /// @dev Deposits into the vault right before a settle and redeems right after.
    address public sandwicher = address(0x5A4D);
    /// @dev A proposed model no curator approved: receipts for it must never pay.
    uint256 internal unapprovedModelId;

    uint256[N_PAYERS] internal payerPks;
    address[N_PAYERS] internal payerAddrs;
    uint256[N_NODES] internal nodePks;
    address[N_NODES] internal nodeAddrs;

    struct Meta {
        uint256 kind;
        uint256 pi;
        uint256 ni;
        bool payerSigOk;
        bool nodeSigOk;
    }

    /// @dev In-batch copy of the model, advanced receipt by receipt like the contract does.
    struct Sim {
        uint256[N_PAYERS] escrow;
        uint256[N_PAYERS * N_NODES] chAmount; // pair index = payer * N_NODES + node
        uint256[N_PAYERS * N_NODES] chTokens;
    }

    /// @dev One batch: the receipts, what was built and what the model expects.
    struct Batch {
        ISettlement.SignedReceipt[] receipts;
        Meta[] metas;
        bytes4[] reasons; // 0 = expected to pay
        uint256[] amounts;
        uint256[] tokens; // what reputation credits: at most what the amount pays for
        uint256 settled;
        uint256 paid;
        address submitter;
    }

    // ------------------------------------------------------------ model (ghost variables)

    uint256 public ghost_supply; // total minted, the only way supply changes
    uint256 public ghost_deposited;
    uint256 public ghost_escrowWithdrawn;
    uint256 public ghost_totalPaid; // sum of settle/settleStrict return values
    uint256 public ghost_escrowSpent; // sum of escrow decreases measured across settle calls
    uint256 public ghost_vaultFromSettlement; // vault balance increases during settle calls
    uint256 public ghost_vaultFromSlash;
    uint256 public ghost_staked;
    uint256 public ghost_stakeWithdrawn;
    uint256 public ghost_slashed;

    mapping(address => uint256) public ghost_escrow;
    mapping(address => uint256) public ghost_unlocking;
    mapping(address => uint256) public ghost_unlockReadyAt;
    mapping(address => mapping(address => uint256)) public ghost_channelAmount;
    mapping(address => mapping(address => uint256)) public ghost_channelTokens;
    mapping(address => mapping(address => uint256)) public lastSeenAmount;
    mapping(address => mapping(address => uint256)) public lastSeenTokens;
    uint256 public ghost_channelDecreases;

    // Expected parts: the per-run floor of each share, summed over every run ever closed.
    mapping(address => uint256) public ghost_expNode;
    uint256 public ghost_expDevelopers;
    uint256 public ghost_expHysa;
    uint256 public ghost_expInfrastructure;
    uint256 public ghost_expResearch;
    mapping(address => uint256) public ghost_earningsWithdrawn;

    mapping(address => uint256) public ghost_paidToNode;
    mapping(address => uint256) public ghost_tokensToNode;
    mapping(address => uint256) public ghost_receiptsToNode;
    mapping(address => uint256) public ghost_lastSettledAt;

    /// @dev Vault round trips around a settle or slash in one block: what they gained (must stay
    ///      zero) and what rounding left in the vault.
    uint256 public ghost_sandwichProfit;
    uint256 public ghost_vaultRoundTripLeft;
    /// @dev Escrow withdrawals outside [readyAt, readyAt + UNLOCK_WINDOW], read from the contract.
    uint256 public ghost_withdrawOutsideWindow;

    mapping(address => uint256) public ghost_stake;
    mapping(address => uint256) public ghost_unbonding;
    mapping(address => uint256) public ghost_unbondReadyAt;
    mapping(address => uint256) public ghost_slashCount;
    mapping(address => uint256) public ghost_slashedFrom;

    /// @dev Calls whose outcome differed from the model (return value, revert, reason, event).
    uint256 public ghost_unexpected;
    string public lastUnexpected;

    mapping(uint256 pair => ISettlement.SignedReceipt) internal lastAccepted;
    mapping(uint256 pair => bool) internal hasLastAccepted;
    mapping(uint256 pair => bool) internal lastNodeSigOk;

    // ------------------------------------------------------------ call summary

    mapping(bytes32 => uint256) public calls;
    uint256 public ghost_settleCalls;
    uint256 public ghost_settleCallsThatPaid;
    uint256 public ghost_receiptsAccepted;
    uint256 public ghost_receiptsRejected;
    uint256 public ghost_runs;
    mapping(bytes4 => uint256) public rejectedBy;

    constructor() {
        setUp();
        payerPks = [PAYER_PK, PAYER2_PK, PAYER3_PK, PAYER4_PK];
        nodePks = [NODE_PK, NODE2_PK, NODE3_PK, OUTSIDER_PK];
        for (uint256 i; i < N_PAYERS; ++i) {
            payerAddrs[i] = vm.addr(payerPks[i]);
        }
        for (uint256 i; i < N_NODES; ++i) {
            nodeAddrs[i] = vm.addr(nodePks[i]);
        }
        _registerNode(nodeAddrs[0], "node-1");
        _registerNode(nodeAddrs[1], "node-2");
        _registerNode(nodeAddrs[2], "node-3");
        _stake(nodeAddrs[3], MIN_STAKE);
        for (uint256 i; i < N_NODES; ++i) {
            ghost_stake[nodeAddrs[i]] = MIN_STAKE;
            ghost_staked += MIN_STAKE;
        }
        vm.prank(publisher);
        unapprovedModelId = models.propose(_spec("never-approved", "bafkreinever"));
        ghost_supply = token.totalSupply();

        // Wallets and allowances up front, so almost every fuzzed call does something.
        for (uint256 i; i < N_NODES; ++i) {
            _fund(nodeAddrs[i], INITIAL_WALLET);
            vm.prank(nodeAddrs[i]);
            token.approve(address(nodes), type(uint256).max);
        }
        _fund(stranger, INITIAL_WALLET);
        vm.prank(stranger);
        token.approve(address(settlement), type(uint256).max);
        for (uint256 i; i < N_PAYERS; ++i) {
            _fund(payerAddrs[i], INITIAL_WALLET);
            vm.prank(payerAddrs[i]);
            token.approve(address(settlement), type(uint256).max);
            vm.prank(payerAddrs[i]);
            settlement.deposit(INITIAL_ESCROW);
            ghost_escrow[payerAddrs[i]] = INITIAL_ESCROW;
            ghost_deposited += INITIAL_ESCROW;
        }
        vm.label(relayer, "relayer");
    }

    // ------------------------------------------------------------ escrow actions

    function deposit(uint256 payerSeed, uint256 amount) external {
        address p = payerAddrs[payerSeed % N_PAYERS];
        amount = bound(amount, 1, 50 ether);
        _topUp(p, amount);
        vm.prank(p);
        try settlement.deposit(amount) {
            ghost_escrow[p] += amount;
            ghost_deposited += amount;
            _count("deposit");
        } catch {
            _unexpected("deposit reverted");
        }
        _afterAction();
    }

    function depositFor(uint256 funderSeed, uint256 payerSeed, uint256 amount) external {
        uint256 f = funderSeed % (N_PAYERS + 1);
        address funder = f == N_PAYERS ? stranger : payerAddrs[f];
        address p = payerAddrs[payerSeed % N_PAYERS];
        amount = bound(amount, 1, 50 ether);
        _topUp(funder, amount);
        ISettlement.Escrow memory before = settlement.escrowOf(p);
        vm.prank(funder);
        try settlement.depositFor(p, amount) {
            ghost_escrow[p] += amount;
            ghost_deposited += amount;
            ISettlement.Escrow memory afterwards = settlement.escrowOf(p);
            if (afterwards.unlocking != before.unlocking || afterwards.unlockReadyAt != before.unlockReadyAt) {
                _unexpected("depositFor touched the unlock");
            }
            _count("depositFor");
        } catch {
            _unexpected("depositFor reverted");
        }
        _afterAction();
    }

    function requestUnlock(uint256 payerSeed, uint256 amount) external {
        address p = payerAddrs[payerSeed % N_PAYERS];
        uint256 balance = ghost_escrow[p];
        if (balance == 0) {
            _count("requestUnlock.skipped");
            return;
        }
        amount = bound(amount, 1, balance);
        vm.prank(p);
        try settlement.requestUnlock(amount) {
            ghost_unlocking[p] = amount;
            uint256 readyAt = block.timestamp + UNLOCK_DELAY;
            if (readyAt > ghost_unlockReadyAt[p]) ghost_unlockReadyAt[p] = readyAt;
            _count("requestUnlock");
        } catch {
            _unexpected("requestUnlock reverted");
        }
        _afterAction();
    }

    function cancelUnlock(uint256 payerSeed) external {
        address p = payerAddrs[payerSeed % N_PAYERS];
        bool pending = ghost_unlockReadyAt[p] != 0;
        vm.prank(p);
        try settlement.cancelUnlock() {
            if (!pending) _unexpected("cancelUnlock without unlock succeeded");
            ghost_unlocking[p] = 0;
            ghost_unlockReadyAt[p] = 0;
            _count("cancelUnlock");
        } catch (bytes memory err) {
            if (pending || bytes4(err) != ISettlement.NoUnlockPending.selector) _unexpected("cancelUnlock reverted");
            _count("cancelUnlock.rejected");
        }
        _afterAction();
    }

    /// @param warpBy Seconds to advance first (up to three times the unlock delay, so some are
    ///        early, some in the window and some after the unlock lapsed).
    function withdraw(uint256 payerSeed, uint256 warpBy) external {
        address p = payerAddrs[payerSeed % N_PAYERS];
        if (ghost_unlockReadyAt[p] == 0) {
            _count("withdraw.skipped");
            return;
        }
        vm.warp(block.timestamp + bound(warpBy, 0, 3 * UNLOCK_DELAY));
        uint256 readyAt = ghost_unlockReadyAt[p];
        bool ready = block.timestamp >= readyAt;
        bool lapsed = block.timestamp > readyAt + settlement.UNLOCK_WINDOW();
        uint256 onChainReadyAt = settlement.escrowOf(p).unlockReadyAt;
        uint256 expected = ghost_unlocking[p] < ghost_escrow[p] ? ghost_unlocking[p] : ghost_escrow[p];
        uint256 walletBefore = token.balanceOf(p);
        vm.prank(p);
        try settlement.withdraw() returns (uint256 amount) {
            if (block.timestamp < onChainReadyAt || block.timestamp > onChainReadyAt + settlement.UNLOCK_WINDOW()) {
                ghost_withdrawOutsideWindow += 1;
            }
            if (!ready || lapsed) _unexpected("withdraw outside its window succeeded");
            if (amount != expected || token.balanceOf(p) - walletBefore != amount) _unexpected("withdraw amount");
            ghost_escrow[p] -= amount;
            ghost_escrowWithdrawn += amount;
            ghost_unlocking[p] = 0;
            ghost_unlockReadyAt[p] = 0;
            _count("withdraw");
        } catch (bytes memory err) {
            bytes4 expectedErr = lapsed ? ISettlement.UnlockLapsed.selector : ISettlement.UnlockNotReady.selector;
            if ((ready && !lapsed) || bytes4(err) != expectedErr) _unexpected("withdraw reverted");
            _count(lapsed ? "withdraw.lapsed" : "withdraw.notReady");
        }
        _afterAction();
    }

    function warp(uint256 secondsBy) external {
        vm.warp(block.timestamp + bound(secondsBy, 1, 3 days));
        _count("warp");
    }

    // ------------------------------------------------------------ stake actions

    function stake(uint256 opSeed, uint256 amount) external {
        address op = nodeAddrs[opSeed % N_NODES];
        amount = bound(amount, 1, 5000 ether);
        _topUp(op, amount);
        vm.prank(op);
        try nodes.stake(amount) {
            ghost_stake[op] += amount;
            ghost_staked += amount;
            _count("stake");
        } catch {
            _unexpected("stake reverted");
        }
        _afterAction();
    }

    function requestUnbond(uint256 opSeed, uint256 amount) external {
        address op = nodeAddrs[opSeed % N_NODES];
        if (ghost_stake[op] == 0) {
            _count("requestUnbond.skipped");
            return;
        }
        amount = bound(amount, 1, ghost_stake[op]);
        vm.prank(op);
        try nodes.requestUnbond(amount) {
            ghost_stake[op] -= amount;
            ghost_unbonding[op] += amount;
            uint256 readyAt = block.timestamp + UNBONDING_PERIOD;
            if (readyAt > ghost_unbondReadyAt[op]) ghost_unbondReadyAt[op] = readyAt;
            _count("requestUnbond");
        } catch {
            _unexpected("requestUnbond reverted");
        }
        _afterAction();
    }

    function cancelUnbond(uint256 opSeed) external {
        address op = nodeAddrs[opSeed % N_NODES];
        uint256 unbonding = ghost_unbonding[op];
        vm.prank(op);
        try nodes.cancelUnbond() {
            if (unbonding == 0) _unexpected("cancelUnbond of nothing succeeded");
            ghost_stake[op] += unbonding;
            ghost_unbonding[op] = 0;
            ghost_unbondReadyAt[op] = 0;
            _count("cancelUnbond");
        } catch (bytes memory err) {
            if (unbonding != 0 || bytes4(err) != INodeRegistry.NothingUnbonding.selector) {
                _unexpected("cancelUnbond reverted");
            }
            _count("cancelUnbond.rejected");
        }
        _afterAction();
    }

    /// @param warpBy Seconds to advance first (up to twice the unbonding period).
    function withdrawStake(uint256 opSeed, uint256 warpBy) external {
        address op = nodeAddrs[opSeed % N_NODES];
        uint256 unbonding = ghost_unbonding[op];
        if (unbonding == 0) {
            _count("withdrawStake.skipped");
            return;
        }
        vm.warp(block.timestamp + bound(warpBy, 0, 2 * UNBONDING_PERIOD));
        bool ready = block.timestamp >= ghost_unbondReadyAt[op];
        uint256 walletBefore = token.balanceOf(op);
        vm.prank(op);
        try nodes.withdrawStake() {
            if (!ready) _unexpected("withdrawStake before readyAt succeeded");
            if (token.balanceOf(op) - walletBefore != unbonding) _unexpected("withdrawStake amount");
            ghost_unbonding[op] = 0;
            ghost_unbondReadyAt[op] = 0;
            ghost_stakeWithdrawn += unbonding;
            _count("withdrawStake");
        } catch (bytes memory err) {
            if (ready || bytes4(err) != INodeRegistry.UnbondingNotReady.selector) {
                _unexpected("withdrawStake reverted");
            }
            _count("withdrawStake.notReady");
        }
        _afterAction();
    }

    /// @dev Mostly takes up to a quarter of what is there; one in eight asks for more than there is
    ///      (a slash takes what is there, up to the amount), which leaves the node unpayable.
    function slash(uint256 opSeed, uint256 amount) external {
        _slash(nodeAddrs[opSeed % N_NODES], amount);
        _afterAction();
    }

    function _slash(address op, uint256 amount) internal {
        uint256 available = ghost_stake[op] + ghost_unbonding[op];
        amount = (amount >> 200) % 8 == 0
            ? bound(amount, available + 1, 2 * available + 1)
            : bound(amount, 1, available / 4 + 1);
        uint256 vaultBefore = token.balanceOf(address(vault));
        vm.prank(slasher);
        try nodes.slash(op, amount, "invariant") returns (uint256 taken) {
            uint256 fromStake = amount < ghost_stake[op] ? amount : ghost_stake[op];
            uint256 fromUnbonding = amount - fromStake < ghost_unbonding[op] ? amount - fromStake : ghost_unbonding[op];
            if (taken != fromStake + fromUnbonding) _unexpected("slash took other than what was there");
            ghost_stake[op] -= fromStake;
            ghost_unbonding[op] -= fromUnbonding;
            ghost_slashed += taken;
            ghost_slashCount[op] += 1;
            ghost_slashedFrom[op] += taken;
            uint256 received = token.balanceOf(address(vault)) - vaultBefore;
            if (received != taken) _unexpected("slash did not reach the vault");
            ghost_vaultFromSlash += received;
            _count("slash");
        } catch {
            _unexpected("slash reverted");
        }
    }

    // ------------------------------------------------------------ vault

    /// @notice Deposits into the vault, lets income arrive (a settle of a node's batch, or a
    ///         slash), and redeems every share, all in one block: a sandwich must earn nothing.
    function vaultSandwich(uint256 seed, uint256 amount) external {
        amount = bound(amount, 1 ether, 100_000 ether);
        _topUp(sandwicher, amount);
        vm.startPrank(sandwicher);
        token.approve(address(vault), amount);
        uint256 shares = vault.deposit(amount, sandwicher);
        vm.stopPrank();
        if (seed % 4 == 0) _slash(nodeAddrs[(seed >> 8) % N_NODES], seed >> 16);
        else _settle(seed, MAX_BATCH, MODE_NODE, false);
        vm.prank(sandwicher);
        uint256 out = vault.redeem(shares, sandwicher, sandwicher);
        if (out > amount) ghost_sandwichProfit += out - amount;
        else ghost_vaultRoundTripLeft += amount - out;
        _count("vaultSandwich");
        _afterAction();
    }

    // ------------------------------------------------------------ earnings

    function withdrawEarnings(uint256 earnerSeed) external {
        address[] memory list = earners();
        address who = list[earnerSeed % list.length];
        uint256 owed = settlement.earnings(who);
        uint256 walletBefore = token.balanceOf(who);
        vm.prank(who);
        try settlement.withdrawEarnings() returns (uint256 amount) {
            if (owed == 0 || amount != owed || token.balanceOf(who) - walletBefore != amount) {
                _unexpected("withdrawEarnings amount");
            }
            ghost_earningsWithdrawn[who] += amount;
            _count("withdrawEarnings");
        } catch (bytes memory err) {
            if (owed != 0 || bytes4(err) != ISettlement.NothingToWithdraw.selector) {
                _unexpected("withdrawEarnings reverted");
            }
            _count("withdrawEarnings.nothing");
        }
        _afterAction();
    }

    // ------------------------------------------------------------ settlement

    /// @notice A node settles a batch of mostly its own receipts (no node signature needed).
    function settleByNode(uint256 seed, uint256 size) external {
        _settle(seed, size, MODE_NODE, false);
    }

    /// @notice A third party settles receipts of any node (each needs the node's signature).
    function settleByRelayer(uint256 seed, uint256 size) external {
        _settle(seed, size, MODE_RELAYER, false);
    }

    /// @notice A node settles receipts of any node, interleaved, so runs are short.
    function settleMixed(uint256 seed, uint256 size) external {
        _settle(seed, size, MODE_MIXED, false);
    }

    /// @notice All-or-nothing settlement: pays everything or reverts with the first bad receipt.
    function settleStrict(uint256 seed, uint256 size) external {
        _settle(seed, size, (seed >> 8) % 2 == 0 ? MODE_NODE : MODE_RELAYER, true);
    }

    function _settle(uint256 seed, uint256 size, uint256 mode, bool strict) internal {
        size = bound(size, 1, MAX_BATCH);
        uint256 submitterIdx = seed % N_REGISTERED;
        Batch memory b = _newBatch(size);
        b.submitter = mode == MODE_RELAYER ? relayer : nodeAddrs[submitterIdx];
        Sim memory sim = _loadSim();
        for (uint256 i; i < size; ++i) {
            uint256 rs = uint256(keccak256(abi.encode(seed, i)));
            // Half the strict batches hold only well-formed receipts (they can still be
            // underfunded), so settleStrict also succeeds, not only reverts.
            Meta memory m = _meta(rs, mode, submitterIdx, strict && seed % 2 == 0);
            b.metas[i] = m;
            b.receipts[i] = _build(rs, m, b.submitter, sim);
            (b.reasons[i], b.amounts[i], b.tokens[i]) = _predict(b.receipts[i], m, b.submitter, sim);
            if (b.reasons[i] == bytes4(0)) {
                b.settled += 1;
                b.paid += b.amounts[i];
            }
        }
        ghost_settleCalls += 1;
        if (strict) _submitStrict(b);
        else _submit(b);
        _afterAction();
    }

    function _submit(Batch memory b) internal {
        uint256 vaultBefore = token.balanceOf(address(vault));
        uint256 escrowBefore = _escrowSum();
        vm.recordLogs();
        vm.prank(b.submitter);
        try settlement.settle(b.receipts) returns (uint256 settled, uint256 paid) {
            if (settled != b.settled || paid != b.paid) _unexpected("settle return values differ from the model");
            _checkRejections(b);
            _apply(b, paid, vaultBefore, escrowBefore);
            _count("settle");
        } catch {
            vm.getRecordedLogs();
            _unexpected("settle reverted");
        }
    }

    function _submitStrict(Batch memory b) internal {
        bytes4 firstBad;
        for (uint256 i; i < b.reasons.length; ++i) {
            if (b.reasons[i] != bytes4(0)) {
                firstBad = b.reasons[i];
                break;
            }
        }
        uint256 vaultBefore = token.balanceOf(address(vault));
        uint256 escrowBefore = _escrowSum();
        vm.recordLogs();
        vm.prank(b.submitter);
        try settlement.settleStrict(b.receipts) returns (uint256 paid) {
            if (firstBad != bytes4(0) || paid != b.paid) _unexpected("settleStrict paid a bad batch");
            _apply(b, paid, vaultBefore, escrowBefore);
            _count("settleStrict");
        } catch (bytes memory err) {
            vm.getRecordedLogs();
            if (firstBad == bytes4(0) || bytes4(err) != firstBad) _unexpected("settleStrict revert reason");
            _count("settleStrict.reverted");
        }
    }

    /// @dev Every ReceiptRejected event must name a receipt the model rejected, with its reason.
    function _checkRejections(Batch memory b) internal {
        Vm.Log[] memory logs = vm.getRecordedLogs();
        uint256 rejected;
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].emitter != address(settlement) || logs[i].topics[0] != ISettlement.ReceiptRejected.selector) {
                continue;
            }
            (uint256 index, bytes memory reason) = abi.decode(logs[i].data, (uint256, bytes));
            if (index >= b.reasons.length || b.reasons[index] == bytes4(0) || bytes4(reason) != b.reasons[index]) {
                _unexpected("rejection reason differs from the model");
            }
            rejected += 1;
        }
        if (rejected != b.reasons.length - b.settled) _unexpected("rejection count");
    }

    /// @dev Moves the model forward after a successful settle.
    function _apply(Batch memory b, uint256 paid, uint256 vaultBefore, uint256 escrowBefore) internal {
        ghost_totalPaid += paid;
        uint256 spent = escrowBefore - _escrowSum();
        if (spent != paid) _unexpected("escrow decrease != paid");
        ghost_escrowSpent += spent;
        ghost_vaultFromSettlement += token.balanceOf(address(vault)) - vaultBefore;
        if (b.settled != 0) ghost_settleCallsThatPaid += 1;
        ghost_receiptsAccepted += b.settled;
        ghost_receiptsRejected += b.reasons.length - b.settled;

        address runNode;
        uint256 runAmount;
        for (uint256 i; i < b.receipts.length; ++i) {
            ISettlement.UsageReceipt memory r = b.receipts[i].receipt;
            if (i == 0 || r.node != runNode) {
                _closeRun(runNode, runAmount);
                runNode = r.node;
                runAmount = 0;
            }
            if (b.reasons[i] != bytes4(0)) {
                rejectedBy[b.reasons[i]] += 1;
                continue;
            }
            runAmount += b.amounts[i];
            ghost_escrow[r.payer] -= b.amounts[i];
            ghost_channelAmount[r.payer][r.node] = r.cumulativeAmount;
            ghost_channelTokens[r.payer][r.node] = r.cumulativeTokens;
            ghost_paidToNode[r.node] += b.amounts[i];
            ghost_tokensToNode[r.node] += b.tokens[i];
            if (b.amounts[i] >= PRICE_PER_1K) {
                // paid for at least 1K tokens: a counted receipt
                ghost_receiptsToNode[r.node] += 1;
                ghost_lastSettledAt[r.node] = block.timestamp;
            }
            uint256 pair = b.metas[i].pi * N_NODES + b.metas[i].ni;
            lastAccepted[pair] = b.receipts[i];
            hasLastAccepted[pair] = true;
            lastNodeSigOk[pair] = b.metas[i].nodeSigOk;
        }
        _closeRun(runNode, runAmount);
    }

    function _closeRun(address node_, uint256 amount) internal {
        if (amount == 0) return;
        uint256 nodePart = amount * 3000 / 10_000;
        uint256 dev = amount * 2500 / 10_000;
        uint256 hysa = amount * 2000 / 10_000;
        uint256 infra = amount * 1500 / 10_000;
        ghost_expNode[node_] += nodePart;
        ghost_expDevelopers += dev;
        ghost_expHysa += hysa;
        ghost_expInfrastructure += infra;
        ghost_expResearch += amount - nodePart - dev - hysa - infra;
        ghost_runs += 1;
    }

    function _meta(uint256 rs, uint256 mode, uint256 submitterIdx, bool wellFormed)
        internal
        pure
        returns (Meta memory m)
    {
        m.kind = wellFormed ? rs % K_REPLAY : rs % N_KINDS;
        m.pi = (rs >> 8) % N_PAYERS;
        if (m.kind == K_UNKNOWN_NODE) m.ni = N_REGISTERED; // the outsider
        else if (mode == MODE_NODE && (rs >> 16) % 8 != 0) m.ni = submitterIdx;
        else m.ni = (rs >> 24) % N_REGISTERED;
    }

    function _build(uint256 rs, Meta memory m, address submitter, Sim memory sim)
        internal
        view
        returns (ISettlement.SignedReceipt memory s)
    {
        uint256 pair = m.pi * N_NODES + m.ni;
        if (m.kind == K_REPLAY && hasLastAccepted[pair]) {
            // The very bytes that were paid before: now stale (or expired), never paid twice.
            m.payerSigOk = true;
            m.nodeSigOk = lastNodeSigOk[pair];
            return lastAccepted[pair];
        }
        s.receipt = _receiptFor(rs, m, sim);
        bytes32 digest = settlement.hashReceipt(s.receipt);
        m.payerSigOk = m.kind != K_BAD_PAYER_SIG;
        s.payerSig = _sign(m.payerSigOk ? payerPks[m.pi] : payerPks[(m.pi + 1) % N_PAYERS], digest);
        if (m.kind == K_BAD_NODE_SIG) {
            // Signed by the wrong key or missing; only a submission by the node itself may pay it.
            if ((rs >> 40) % 2 == 0) s.nodeSig = _sign(nodePks[(m.ni + 1) % N_NODES], digest);
        } else if (submitter == s.receipt.node && (rs >> 40) % 2 == 0) {
            // The node submits its own receipt without signing it.
        } else {
            s.nodeSig = _sign(nodePks[m.ni], digest);
            m.nodeSigOk = true;
        }
    }

    function _receiptFor(uint256 rs, Meta memory m, Sim memory sim)
        internal
        view
        returns (ISettlement.UsageReceipt memory r)
    {
        uint256 pair = m.pi * N_NODES + m.ni;
        uint256 paidAmount = sim.chAmount[pair];
        uint256 paidTokens = sim.chTokens[pair];
        // A quarter of the receipts sit exactly on a boundary of the check their kind aims at.
        bool edge = (rs >> 250) % 4 == 0;
        uint256 delta;
        if ((rs >> 240) % 64 == 0 && sim.escrow[m.pi] != 0) delta = sim.escrow[m.pi]; // drains it exactly
        else if ((rs >> 48) % 4 == 0) delta = bound(rs >> 56, 1, 9); // every split part rounds
        else delta = bound(rs >> 56, 1, 2 * PRICE_PER_1K); // about half pay for 1K tokens or more
        r.payer = payerAddrs[m.pi];
        r.node = nodeAddrs[m.ni];
        r.modelId = m.kind == K_UNBILLABLE_MODEL ? (edge ? unapprovedModelId : 999) : modelId;
        r.cumulativeAmount = paidAmount + delta;
        r.cumulativeTokens = paidTokens + bound(rs >> 120, 0, 5000);
        // Valid through expiry inclusive.
        r.expiry = edge ? block.timestamp : block.timestamp + bound(rs >> 160, 0, 1 days);
        if (m.kind == K_STALE || m.kind == K_REPLAY) {
            r.cumulativeAmount = edge ? paidAmount : paidAmount - bound(rs >> 56, 0, paidAmount);
        } else if (m.kind == K_UNDERFUNDED) {
            r.cumulativeAmount = paidAmount + sim.escrow[m.pi] + (edge ? 1 : bound(rs >> 56, 1, 1 ether));
        } else if (m.kind == K_EXPIRED) {
            r.expiry = block.timestamp - (edge ? 1 : bound(rs >> 160, 1, 1 hours));
        } else if (m.kind == K_INCONSISTENT_TOKENS && paidTokens != 0) {
            r.cumulativeTokens = paidTokens - (edge ? 1 : bound(rs >> 120, 1, paidTokens));
        } else if (m.kind == K_OUT_OF_RANGE) {
            r.cumulativeAmount = uint256(type(uint128).max) + (edge ? 1 : bound(rs >> 56, 1, 1e30));
        }
    }

    /// @dev The model of `_apply` in Settlement: same checks, same order.
    function _predict(ISettlement.SignedReceipt memory s, Meta memory m, address submitter, Sim memory sim)
        internal
        view
        returns (bytes4 reason, uint256 amount, uint256 tokens)
    {
        ISettlement.UsageReceipt memory r = s.receipt;
        uint256 pair = m.pi * N_NODES + m.ni;
        if (m.ni >= N_REGISTERED || ghost_stake[r.node] + ghost_unbonding[r.node] == 0) {
            return (ISettlement.NodeNotPayable.selector, 0, 0);
        }
        if (block.timestamp > r.expiry) return (ISettlement.ReceiptExpired.selector, 0, 0);
        if (r.cumulativeAmount > type(uint128).max) return (ISettlement.AmountOutOfRange.selector, 0, 0);
        if (r.modelId != modelId) return (ISettlement.ModelNotBillable.selector, 0, 0);
        if (!m.payerSigOk) return (ISettlement.InvalidPayerSignature.selector, 0, 0);
        if (submitter != r.node && !m.nodeSigOk) return (ISettlement.InvalidNodeSignature.selector, 0, 0);
        if (r.cumulativeAmount <= sim.chAmount[pair]) return (ISettlement.StaleReceipt.selector, 0, 0);
        if (r.cumulativeTokens < sim.chTokens[pair] || r.cumulativeTokens > type(uint128).max) {
            return (ISettlement.InconsistentTokens.selector, 0, 0);
        }
        amount = r.cumulativeAmount - sim.chAmount[pair];
        if (amount > sim.escrow[m.pi]) return (ISettlement.InsufficientEscrow.selector, 0, 0);
        tokens = r.cumulativeTokens - sim.chTokens[pair];
        uint256 paidFor = amount * 1000 / PRICE_PER_1K;
        if (paidFor < tokens) tokens = paidFor;
        sim.escrow[m.pi] -= amount;
        sim.chAmount[pair] = r.cumulativeAmount;
        sim.chTokens[pair] = r.cumulativeTokens;
    }

    function _loadSim() internal view returns (Sim memory sim) {
        for (uint256 p; p < N_PAYERS; ++p) {
            sim.escrow[p] = ghost_escrow[payerAddrs[p]];
            for (uint256 n; n < N_NODES; ++n) {
                sim.chAmount[p * N_NODES + n] = ghost_channelAmount[payerAddrs[p]][nodeAddrs[n]];
                sim.chTokens[p * N_NODES + n] = ghost_channelTokens[payerAddrs[p]][nodeAddrs[n]];
            }
        }
    }

    function _newBatch(uint256 size) internal pure returns (Batch memory b) {
        b.receipts = new ISettlement.SignedReceipt[](size);
        b.metas = new Meta[](size);
        b.reasons = new bytes4[](size);
        b.amounts = new uint256[](size);
        b.tokens = new uint256[](size);
    }

    // ------------------------------------------------------------ helpers

    /// @dev After every action: records any decrease of a channel, then the values seen.
    function _afterAction() internal {
        for (uint256 p; p < N_PAYERS; ++p) {
            for (uint256 n; n < N_NODES; ++n) {
                address a = payerAddrs[p];
                address b = nodeAddrs[n];
                ISettlement.Channel memory c = settlement.channelOf(a, b);
                if (c.amount < lastSeenAmount[a][b] || c.tokens < lastSeenTokens[a][b]) ghost_channelDecreases += 1;
                lastSeenAmount[a][b] = c.amount;
                lastSeenTokens[a][b] = c.tokens;
            }
        }
    }

    function _escrowSum() internal view returns (uint256 sum) {
        for (uint256 p; p < N_PAYERS; ++p) {
            sum += settlement.escrowOf(payerAddrs[p]).balance;
        }
    }

    function _fund(address to, uint256 amount) internal {
        _mint(to, amount);
        ghost_supply += amount;
    }

    function _topUp(address who, uint256 amount) internal {
        uint256 balance = token.balanceOf(who);
        if (balance < amount) _fund(who, amount - balance + INITIAL_WALLET);
    }

    function _count(string memory name) internal {
        calls[keccak256(bytes(name))] += 1;
    }

    function _unexpected(string memory what) internal {
        ghost_unexpected += 1;
        lastUnexpected = what;
    }

    // ------------------------------------------------------------ views for the invariant test

    function callCount(string calldata name) external view returns (uint256) {
        return calls[keccak256(bytes(name))];
    }

    function deployment() external view returns (NetworkToken, NodeRegistry, Settlement, HysaVault) {
        return (token, nodes, settlement, vault);
    }

    function payers() public view returns (address[] memory list) {
        list = new address[](N_PAYERS);
        for (uint256 i; i < N_PAYERS; ++i) {
            list[i] = payerAddrs[i];
        }
    }

    /// @notice Everyone that ever staked: the registered nodes and the outsider.
    function stakers() public view returns (address[] memory list) {
        list = new address[](N_NODES);
        for (uint256 i; i < N_NODES; ++i) {
            list[i] = nodeAddrs[i];
        }
    }

    function registeredNodes() public view returns (address[] memory list) {
        list = new address[](N_REGISTERED);
        for (uint256 i; i < N_REGISTERED; ++i) {
            list[i] = nodeAddrs[i];
        }
    }

    /// @notice Every account settlement can credit: all nodes (the outsider never earns) and the
    ///         three credited treasury recipients.
    function earners() public view returns (address[] memory list) {
        list = new address[](N_NODES + 3);
        for (uint256 i; i < N_NODES; ++i) {
            list[i] = nodeAddrs[i];
        }
        list[N_NODES] = developers;
        list[N_NODES + 1] = infrastructure;
        list[N_NODES + 2] = research;
    }

    function treasuryAccounts() external view returns (address, address, address) {
        return (developers, infrastructure, research);
    }

    /// @notice Every address that can ever hold the token in this fixture.
    function holders() external view returns (address[] memory list) {
        address[] memory e = earners();
        list = new address[](N_PAYERS + e.length + 10);
        uint256 k;
        for (uint256 i; i < N_PAYERS; ++i) {
            list[k++] = payerAddrs[i];
        }
        for (uint256 i; i < e.length; ++i) {
            list[k++] = e[i];
        }
        list[k++] = stranger;
        list[k++] = relayer;
        list[k++] = address(vault);
        list[k++] = address(settlement);
        list[k++] = address(nodes);
        list[k++] = admin;
        list[k++] = slasher;
        list[k++] = address(this);
        list[k++] = address(models);
        list[k++] = sandwicher;
    }
}
