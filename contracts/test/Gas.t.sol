// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Base} from "./utils/Base.sol";
import {Vm} from "./utils/Vm.sol";
import {ISettlement} from "../src/interfaces/ISettlement.sol";

/// @dev Cheatcodes missing from utils/Vm.sol, at the same address.
interface VmGasExtra {
    function cool(address target) external;
    function snapshotState() external returns (uint256 snapshotId);
    function revertToState(uint256 snapshotId) external returns (bool success);
}

/// @notice Gas of `settle` for batches of 1, 10 and 50 receipts, each from a distinct payer to one
///         node, submitted by the node (no node signature) or by a third party (node signatures).
///         Numbers are printed with `forge test -vv`.
/// @dev What is measured is the execution gas of the settle call frame (`vm.lastCallGas`), with
///      every contract cold as in a real transaction: each test function is its own transaction,
///      and the marginal tests restore the state and `cool` the contracts between measurements.
///      The transaction estimate adds 21000 and the calldata cost and subtracts the capped refund.
abstract contract GasBase is Base {
    VmGasExtra internal constant vmx = VmGasExtra(address(uint160(uint256(keccak256("hevm cheat code")))));
    uint256 internal constant PAYERS = 50;
    uint256 internal constant FIRST_PK = 0x1000;
    address internal relayer = address(0x7E1A);

    event log_named_uint(string key, uint256 val);

    struct Measured {
        uint256 execution;
        uint256 refund;
        uint256 calldataGas;
        uint256 txEstimate;
    }

    function setUp() public virtual override {
        super.setUp();
        _registerNode(node, "node-1");
        for (uint256 i; i < PAYERS; ++i) {
            _deposit(vm.addr(FIRST_PK + i), 1000 ether);
        }
    }

    /// @dev One settled receipt from a payer outside the measured ones, in setUp (an earlier
    ///      transaction): the node's earnings and reputation, the treasury earnings and the vault's
    ///      balance are then non-zero, as for any node that has been paid before.
    function _warmUpNode() internal {
        uint256 pk = FIRST_PK + PAYERS;
        _deposit(vm.addr(pk), 10 ether);
        ISettlement.SignedReceipt[] memory batch = _one(_signed(pk, 0, _receipt(vm.addr(pk), node, 777, 1.234 ether)));
        vm.prank(node);
        (uint256 settled,) = settlement.settle(batch);
        vm.assertEq(settled, 1, "warm-up receipt settles");
    }

    /// @dev `n` receipts, payer i to `node`, the i-th payer's `round`-th cumulative receipt.
    function _batch(uint256 n, uint256 round, bool nodeSigned)
        internal
        view
        returns (ISettlement.SignedReceipt[] memory batch)
    {
        batch = new ISettlement.SignedReceipt[](n);
        for (uint256 i; i < n; ++i) {
            // Amounts are not round numbers, so the split's parts are all non-zero and realistic.
            ISettlement.UsageReceipt memory r = _receipt(vm.addr(FIRST_PK + i), node, round * 1234, round * 2.468 ether);
            batch[i] = _signed(FIRST_PK + i, nodeSigned ? NODE_PK : 0, r);
        }
    }

    function _settle(ISettlement.SignedReceipt[] memory batch, address submitter) internal returns (Measured memory m) {
        vm.prank(submitter);
        (uint256 settled,) = settlement.settle(batch);
        Vm.Gas memory g = vm.lastCallGas();
        vm.assertEq(settled, batch.length, "every receipt settles");
        m.execution = g.gasTotalUsed;
        m.refund = g.gasRefunded > 0 ? uint256(int256(g.gasRefunded)) : 0;
        m.calldataGas = _calldataGas(abi.encodeCall(settlement.settle, (batch)));
        uint256 gross = 21_000 + m.calldataGas + m.execution;
        m.txEstimate = gross - (m.refund < gross / 5 ? m.refund : gross / 5);
    }

    /// @dev The same measurement from the state of `snapshot`, with every contract cold again.
    function _settleFrom(uint256 snapshot, ISettlement.SignedReceipt[] memory batch, address submitter)
        internal
        returns (Measured memory m)
    {
        vmx.revertToState(snapshot);
        vmx.cool(address(settlement));
        vmx.cool(address(nodes));
        vmx.cool(address(token));
        vmx.cool(address(vault));
        m = _settle(batch, submitter);
    }

    /// @dev EIP-2028 calldata cost (Cancun): 4 per zero byte, 16 per non-zero byte.
    function _calldataGas(bytes memory data) internal pure returns (uint256 cost) {
        for (uint256 i; i < data.length; ++i) {
            cost += data[i] == 0 ? 4 : 16;
        }
    }

    function _log(string memory label, Measured memory m, uint256 n) internal {
        emit log_named_uint(string.concat(label, " execution gas"), m.execution);
        emit log_named_uint(string.concat(label, " execution gas per receipt"), m.execution / n);
        emit log_named_uint(string.concat(label, " calldata gas"), m.calldataGas);
        emit log_named_uint(string.concat(label, " refund"), m.refund);
        emit log_named_uint(string.concat(label, " tx gas estimate"), m.txEstimate);
    }

    /// @dev Batches of 1, 10 and 50 from the same starting state; returns the marginal gas per
    ///      extra receipt between 10 and 50.
    function _marginal(string memory label, uint256 round, bool thirdParty) internal returns (uint256 marginal) {
        address submitter = thirdParty ? relayer : node;
        ISettlement.SignedReceipt[] memory b1 = _batch(1, round, thirdParty);
        ISettlement.SignedReceipt[] memory b10 = _batch(10, round, thirdParty);
        ISettlement.SignedReceipt[] memory b50 = _batch(50, round, thirdParty);
        uint256 snapshot = vmx.snapshotState();
        Measured memory m1 = _settleFrom(snapshot, b1, submitter);
        Measured memory m10 = _settleFrom(snapshot, b10, submitter);
        Measured memory m50 = _settleFrom(snapshot, b50, submitter);
        _log(string.concat(label, " batch 1"), m1, 1);
        _log(string.concat(label, " batch 10"), m10, 10);
        _log(string.concat(label, " batch 50"), m50, 50);
        vm.assertLt(m50.execution / 50, m10.execution / 10, "batching amortises the fixed cost (50 vs 10)");
        vm.assertLt(m10.execution / 10, m1.execution, "batching amortises the fixed cost (10 vs 1)");
        marginal = (m50.execution - m10.execution) / 40;
        emit log_named_uint(string.concat(label, " marginal execution gas per receipt (50-10)/40"), marginal);
        emit log_named_uint(
            string.concat(label, " marginal tx gas per receipt (50-10)/40"), (m50.txEstimate - m10.txEstimate) / 40
        );
    }
}

/// @notice The very first settlement of a node that was never paid: besides the channels, the
///         node's earnings and reputation, the treasury earnings and the vault's token balance all
///         go from zero to non-zero (a one-off per node, or per deployment for the treasury).
contract GasGenesisSettlementTest is GasBase {
    function test_gas_genesis_nodeSubmitted() public {
        _marginal("genesis/node-submitted", 1, false);
    }

    function test_gas_genesis_thirdParty() public {
        _marginal("genesis/third-party", 1, true);
    }
}

/// @notice First settlement of fresh payer/node pairs for a node that has been paid before: each
///         receipt's channel goes from zero to non-zero.
contract GasFirstSettlementTest is GasBase {
    uint256 internal constant ROUND = 1;

    function setUp() public override {
        super.setUp();
        _warmUpNode();
    }

    function test_gas_first_nodeSubmitted_batch1() public {
        _log("first/node-submitted batch 1", _settle(_batch(1, ROUND, false), node), 1);
    }

    function test_gas_first_nodeSubmitted_batch10() public {
        _log("first/node-submitted batch 10", _settle(_batch(10, ROUND, false), node), 10);
    }

    function test_gas_first_nodeSubmitted_batch50() public {
        _log("first/node-submitted batch 50", _settle(_batch(50, ROUND, false), node), 50);
    }

    function test_gas_first_thirdParty_batch1() public {
        _log("first/third-party batch 1", _settle(_batch(1, ROUND, true), relayer), 1);
    }

    function test_gas_first_thirdParty_batch10() public {
        _log("first/third-party batch 10", _settle(_batch(10, ROUND, true), relayer), 10);
    }

    function test_gas_first_thirdParty_batch50() public {
        _log("first/third-party batch 50", _settle(_batch(50, ROUND, true), relayer), 50);
    }

    function test_gas_first_nodeSubmitted_marginal() public {
        _marginal("first/node-submitted", ROUND, false);
    }

    function test_gas_first_thirdParty_marginal() public {
        _marginal("first/third-party", ROUND, true);
    }
}

/// @notice Steady state: every pair (and the node, reputation and treasury) settled once before
///         (in setUp, a previous transaction); each payer's next cumulative receipt is settled.
contract GasSteadySettlementTest is GasBase {
    uint256 internal constant ROUND = 2;

    function setUp() public override {
        super.setUp();
        _warmUpNode();
        ISettlement.SignedReceipt[] memory batch = _batch(PAYERS, 1, false);
        vm.prank(node);
        (uint256 settled,) = settlement.settle(batch);
        vm.assertEq(settled, PAYERS, "warm-up settles every pair");
    }

    function test_gas_steady_nodeSubmitted_batch1() public {
        _log("steady/node-submitted batch 1", _settle(_batch(1, ROUND, false), node), 1);
    }

    function test_gas_steady_nodeSubmitted_batch10() public {
        _log("steady/node-submitted batch 10", _settle(_batch(10, ROUND, false), node), 10);
    }

    function test_gas_steady_nodeSubmitted_batch50() public {
        _log("steady/node-submitted batch 50", _settle(_batch(50, ROUND, false), node), 50);
    }

    function test_gas_steady_thirdParty_batch1() public {
        _log("steady/third-party batch 1", _settle(_batch(1, ROUND, true), relayer), 1);
    }

    function test_gas_steady_thirdParty_batch10() public {
        _log("steady/third-party batch 10", _settle(_batch(10, ROUND, true), relayer), 10);
    }

    function test_gas_steady_thirdParty_batch50() public {
        _log("steady/third-party batch 50", _settle(_batch(50, ROUND, true), relayer), 50);
    }

    /// @dev The budgets: at most 20k execution gas per extra receipt when a node settles its own
    ///      receipts (two cold slots read and rewritten, one ecrecover, one LOG4, EIP-712 hashing),
    ///      and, with 1,000 requests folded into each cumulative receipt, at most 100 gas per request.
    function test_gas_steady_nodeSubmitted_marginal() public {
        uint256 marginal = _marginal("steady/node-submitted", ROUND, false);
        vm.assertLe(marginal, 20_000, "marginal execution gas per receipt");
        emit log_named_uint("steady/node-submitted gas per request at 1,000 requests per receipt", marginal / 1000);
        vm.assertLe(marginal / 1000, 100, "amortised gas per request");
    }

    function test_gas_steady_thirdParty_marginal() public {
        _marginal("steady/third-party", ROUND, true);
    }
}
