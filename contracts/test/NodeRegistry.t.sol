// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Base} from "./utils/Base.sol";
import {NodeRegistry} from "../src/NodeRegistry.sol";
import {INodeRegistry} from "../src/interfaces/INodeRegistry.sol";
import {IModelRegistry} from "../src/interfaces/IModelRegistry.sol";
import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";

contract NodeRegistryTest is Base {
    string internal constant ENDPOINT = "http://127.0.0.1:8080";
    string internal constant HARDWARE = "{\"gpu\":\"rtx4090\",\"ram_gb\":64}";

    function _repeat(bytes1 c, uint256 n) internal pure returns (string memory) {
        bytes memory b = new bytes(n);
        for (uint256 i; i < n; ++i) {
            b[i] = c;
        }
        return string(b);
    }

    function _ids(uint256 a) internal pure returns (uint256[] memory ids) {
        ids = new uint256[](1);
        ids[0] = a;
    }

    function _ids(uint256 a, uint256 b) internal pure returns (uint256[] memory ids) {
        ids = new uint256[](2);
        ids[0] = a;
        ids[1] = b;
    }

    function _register(address operator, string memory nodeId, uint256[] memory hosted) internal {
        vm.prank(operator);
        nodes.register(nodeId, ENDPOINT, HARDWARE, hosted);
    }

    function _unbond(address operator, uint256 amount) internal {
        vm.prank(operator);
        nodes.requestUnbond(amount);
    }

    function _payable(address operator) internal view returns (bool payable_) {
        (payable_,,) = nodes.settlementCapacity(operator);
    }

    function _operators() internal view returns (address[] memory) {
        return nodes.operatorsPage(0, type(uint256).max);
    }

    function _approvedModels(uint256 n) internal returns (uint256[] memory ids) {
        ids = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            string memory suffix = vm.toString(i);
            ids[i] =
                _approvedModel(string(abi.encodePacked("m-", suffix)), string(abi.encodePacked("bafkreim-", suffix)));
        }
    }

    // ------------------------------------------------------------------ constructor

    function test_constructor_setsParametersAndRoles() public view {
        vm.assertEq(address(nodes.token()), address(token), "token");
        vm.assertEq(address(nodes.models()), address(models), "models");
        vm.assertEq(nodes.minStake(), MIN_STAKE, "min stake");
        vm.assertEq(nodes.unbondingPeriod(), UNBONDING_PERIOD, "period");
        vm.assertEq(nodes.slashRecipient(), address(vault), "slash recipient is the vault");
        vm.assertTrue(nodes.hasRole(nodes.DEFAULT_ADMIN_ROLE(), admin), "admin");
        vm.assertTrue(nodes.hasRole(nodes.SLASHER_ROLE(), admin), "admin slashes");
        vm.assertTrue(nodes.hasRole(nodes.SETTLEMENT_ROLE(), address(settlement)), "settlement role");
        vm.assertFalse(nodes.hasRole(nodes.SETTLEMENT_ROLE(), admin), "admin is not settlement");
    }

    function test_RevertWhen_constructedWithZeroSlashRecipient() public {
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.ZeroAddress.selector));
        new NodeRegistry(IERC20(address(token)), models, admin, address(0), MIN_STAKE, UNBONDING_PERIOD);
    }

    function test_RevertWhen_constructedWithZeroMinStake() public {
        vm.expectRevert(
            abi.encodeWithSelector(INodeRegistry.ParameterOutOfBounds.selector, "minStake", 0, 1, nodes.MAX_MIN_STAKE())
        );
        new NodeRegistry(IERC20(address(token)), models, admin, address(vault), 0, UNBONDING_PERIOD);
    }

    function test_RevertWhen_constructedWithShortUnbondingPeriod() public {
        vm.expectRevert(
            abi.encodeWithSelector(
                INodeRegistry.ParameterOutOfBounds.selector, "unbondingPeriod", 59 minutes, 1 hours, 90 days
            )
        );
        new NodeRegistry(IERC20(address(token)), models, admin, address(vault), MIN_STAKE, 59 minutes);
    }

    // ------------------------------------------------------------------ stake

    function test_stake_addsToStakeAndPullsTokens() public {
        _stake(node, 300 ether);
        _stake(node, 200 ether);
        vm.assertEq(nodes.getNode(node).stake, 500 ether, "stake");
        vm.assertEq(token.balanceOf(address(nodes)), 500 ether, "held by registry");
        vm.assertEq(token.balanceOf(node), 0, "pulled from operator");
        vm.assertFalse(_payable(node), "staking is not registering");
        vm.assertEq(_operators().length, 0, "not listed");
    }

    function test_stake_emitsStakeAdded() public {
        _stake(node, 300 ether);
        _mint(node, 200 ether);
        vm.prank(node);
        token.approve(address(nodes), 200 ether);
        vm.expectEmit(true, false, false, true, address(nodes));
        emit INodeRegistry.StakeAdded(node, 200 ether, 500 ether);
        vm.prank(node);
        nodes.stake(200 ether);
    }

    function test_RevertWhen_stakeZero() public {
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.ZeroAmount.selector));
        vm.prank(node);
        nodes.stake(0);
    }

    function test_RevertWhen_stakeWithoutAllowance() public {
        _mint(node, 10 ether);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, address(nodes), 0, 10 ether)
        );
        vm.prank(node);
        nodes.stake(10 ether);
    }

    function testFuzz_stake_accumulates(uint256 a, uint256 b) public {
        a = bound(a, 1, 1e30);
        b = bound(b, 1, 1e30);
        _stake(node, a);
        _stake(node, b);
        vm.assertEq(nodes.getNode(node).stake, a + b, "stake sum");
        vm.assertEq(token.balanceOf(address(nodes)), a + b, "tokens held");
    }

    // ------------------------------------------------------------------ register

    function test_register_storesNode() public {
        vm.warp(1_700_000_500);
        _registerNode(node, "node-1");
        INodeRegistry.Node memory n = nodes.getNode(node);
        vm.assertEq(n.nodeId, "node-1", "node id");
        vm.assertEq(n.endpoint, ENDPOINT, "endpoint");
        vm.assertEq(n.hardware, HARDWARE, "hardware");
        vm.assertEq(n.hostedModels.length, 1, "one model");
        vm.assertEq(n.hostedModels[0], modelId, "hosted model");
        vm.assertEq(n.stake, MIN_STAKE, "stake");
        vm.assertEq(n.unbonding, 0, "unbonding");
        vm.assertEq(uint256(n.registeredAt), 1_700_000_500, "registeredAt");
        vm.assertTrue(n.registered, "registered");
        vm.assertTrue(nodes.isActive(node), "active");
        vm.assertTrue(_payable(node), "known");
        vm.assertEq(nodes.nodeIdOwner(keccak256("node-1")), node, "id owner");
        vm.assertEq(_operators().length, 1, "listed");
        vm.assertEq(_operators()[0], node, "operator");
    }

    function test_register_emitsNodeRegistered() public {
        _stake(node, MIN_STAKE);
        uint256[] memory hosted = _ids(modelId);
        vm.expectEmit(true, false, false, true, address(nodes));
        emit INodeRegistry.NodeRegistered(node, "node-1", ENDPOINT, HARDWARE, hosted);
        _register(node, "node-1", hosted);
    }

    function test_register_atExactMinimumStake() public {
        _stake(node, MIN_STAKE);
        _register(node, "node-1", _ids(modelId));
        vm.assertTrue(nodes.isActive(node), "active at the minimum");
    }

    function test_register_withNoModels() public {
        _stake(node, MIN_STAKE);
        _register(node, "node-1", new uint256[](0));
        vm.assertEq(nodes.getNode(node).hostedModels.length, 0, "no models");
        vm.assertTrue(nodes.isActive(node), "active");
    }

    function test_RevertWhen_StakeBelowMinimum() public {
        _stake(node, MIN_STAKE - 1);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.StakeBelowMinimum.selector, MIN_STAKE - 1, MIN_STAKE));
        _register(node, "node-1", _ids(modelId));
        vm.assertFalse(_payable(node), "not known");
    }

    function test_RevertWhen_StakeBelowMinimum_noStakeAtAll() public {
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.StakeBelowMinimum.selector, 0, MIN_STAKE));
        _register(node, "node-1", _ids(modelId));
    }

    function test_RevertWhen_StakeBelowMinimum_unbondingDoesNotCount() public {
        _stake(node, MIN_STAKE);
        _unbond(node, 1);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.StakeBelowMinimum.selector, MIN_STAKE - 1, MIN_STAKE));
        _register(node, "node-1", _ids(modelId));
    }

    function testFuzz_register_needsMinimumStake(uint256 amount) public {
        amount = bound(amount, 1, 3 * MIN_STAKE);
        _stake(node, amount);
        if (amount < MIN_STAKE) {
            vm.expectRevert(abi.encodeWithSelector(INodeRegistry.StakeBelowMinimum.selector, amount, MIN_STAKE));
            _register(node, "node-1", _ids(modelId));
            vm.assertFalse(_payable(node), "rejected");
        } else {
            _register(node, "node-1", _ids(modelId));
            vm.assertTrue(nodes.isActive(node), "accepted");
        }
    }

    function test_RevertWhen_AlreadyRegistered() public {
        _registerNode(node, "node-1");
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.AlreadyRegistered.selector, node));
        _register(node, "node-1b", _ids(modelId));
        vm.assertEq(nodes.getNode(node).nodeId, "node-1", "unchanged");
    }

    function test_RevertWhen_nodeIdEmpty() public {
        _stake(node, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.InvalidNodeField.selector, "nodeId"));
        _register(node, "", _ids(modelId));
    }

    function test_RevertWhen_nodeIdTooLong() public {
        _stake(node, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.InvalidNodeField.selector, "nodeId"));
        _register(node, _repeat("i", 65), _ids(modelId));
    }

    function test_RevertWhen_endpointEmpty() public {
        _stake(node, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.InvalidNodeField.selector, "endpoint"));
        vm.prank(node);
        nodes.register("node-1", "", HARDWARE, _ids(modelId));
    }

    function test_RevertWhen_endpointTooLong() public {
        _stake(node, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.InvalidNodeField.selector, "endpoint"));
        vm.prank(node);
        nodes.register("node-1", _repeat("e", 257), HARDWARE, _ids(modelId));
    }

    function test_RevertWhen_hardwareEmpty() public {
        _stake(node, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.InvalidNodeField.selector, "hardware"));
        vm.prank(node);
        nodes.register("node-1", ENDPOINT, "", _ids(modelId));
    }

    function test_RevertWhen_hardwareTooLong() public {
        _stake(node, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.InvalidNodeField.selector, "hardware"));
        vm.prank(node);
        nodes.register("node-1", ENDPOINT, _repeat("h", 1025), _ids(modelId));
    }

    function test_register_acceptsFieldsAtMaxLength() public {
        _stake(node, MIN_STAKE);
        vm.prank(node);
        nodes.register(_repeat("i", 64), _repeat("e", 256), _repeat("h", 1024), _ids(modelId));
        INodeRegistry.Node memory n = nodes.getNode(node);
        vm.assertEq(bytes(n.nodeId).length, 64, "node id");
        vm.assertEq(bytes(n.endpoint).length, 256, "endpoint");
        vm.assertEq(bytes(n.hardware).length, 1024, "hardware");
    }

    /// @dev One fuzzed length per text field: accepted iff 1 <= length <= the field's limit.
    function testFuzz_register_textLengthLimits(uint256 fieldSeed, uint256 length) public {
        uint256 field = bound(fieldSeed, 0, 2);
        string memory nodeId = "node-1";
        string memory endpoint = ENDPOINT;
        string memory hardware = HARDWARE;
        string memory fieldName;
        uint256 maxBytes;
        if (field == 0) {
            length = bound(length, 0, 100);
            nodeId = _repeat("i", length);
            (fieldName, maxBytes) = ("nodeId", nodes.MAX_NODE_ID_BYTES());
        } else if (field == 1) {
            length = bound(length, 0, 300);
            endpoint = _repeat("e", length);
            (fieldName, maxBytes) = ("endpoint", nodes.MAX_ENDPOINT_BYTES());
        } else {
            length = bound(length, 0, 1100);
            hardware = _repeat("h", length);
            (fieldName, maxBytes) = ("hardware", nodes.MAX_HARDWARE_BYTES());
        }
        _stake(node, MIN_STAKE);
        uint256[] memory hosted = _ids(modelId);
        if (length == 0 || length > maxBytes) {
            vm.expectRevert(abi.encodeWithSelector(INodeRegistry.InvalidNodeField.selector, fieldName));
            vm.prank(node);
            nodes.register(nodeId, endpoint, hardware, hosted);
            vm.assertFalse(_payable(node), "rejected");
        } else {
            vm.prank(node);
            nodes.register(nodeId, endpoint, hardware, hosted);
            vm.assertTrue(nodes.isActive(node), "accepted");
        }
    }

    function test_RevertWhen_NodeIdTaken() public {
        _registerNode(node, "node-1");
        _stake(node2, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.NodeIdTaken.selector, "node-1", node));
        _register(node2, "node-1", _ids(modelId));
    }

    function test_RevertWhen_NodeIdTaken_afterOwnerDeregistered() public {
        // Deregistering alone releases nothing: only re-registering under another id does.
        _registerNode(node, "node-1");
        vm.prank(node);
        nodes.deregister();
        vm.assertEq(nodes.nodeIdOwner(keccak256("node-1")), node, "still reserved while deregistered");
        _stake(node2, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.NodeIdTaken.selector, "node-1", node));
        _register(node2, "node-1", _ids(modelId));
    }

    function test_RevertWhen_NodeIdTaken_afterOwnerDeregisteredAndWithdrewAllStake() public {
        _registerNode(node, "node-1");
        vm.prank(node);
        nodes.deregister();
        _unbond(node, MIN_STAKE);
        vm.warp(block.timestamp + UNBONDING_PERIOD);
        vm.prank(node);
        nodes.withdrawStake();
        vm.assertEq(nodes.getNode(node).stake + nodes.getNode(node).unbonding, 0, "nothing staked");
        _stake(node2, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.NodeIdTaken.selector, "node-1", node));
        _register(node2, "node-1", _ids(modelId));
    }

    function test_RevertWhen_ModelNotHostable_proposedOnly() public {
        vm.prank(publisher);
        uint256 proposed = models.propose(_spec("unapproved", "bafkreiunapproved"));
        _stake(node, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.ModelNotHostable.selector, proposed));
        _register(node, "node-1", _ids(modelId, proposed));
    }

    function test_RevertWhen_ModelNotHostable_unknownId() public {
        _stake(node, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.ModelNotHostable.selector, 777));
        _register(node, "node-1", _ids(777));
    }

    function test_RevertWhen_ModelNotHostable_deprecated() public {
        vm.prank(curator);
        models.deprecate(modelId);
        _stake(node, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.ModelNotHostable.selector, modelId));
        _register(node, "node-1", _ids(modelId));
    }

    function test_RevertWhen_ModelNotHostable_duplicateId() public {
        _stake(node, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.ModelNotHostable.selector, modelId));
        _register(node, "node-1", _ids(modelId, modelId));
    }

    function test_RevertWhen_ModelNotHostable_duplicateNotAdjacent() public {
        uint256 other = _approvedModel("other", "bafkreiother");
        uint256[] memory hosted = new uint256[](3);
        hosted[0] = modelId;
        hosted[1] = other;
        hosted[2] = modelId;
        _stake(node, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.ModelNotHostable.selector, modelId));
        _register(node, "node-1", hosted);
    }

    function test_RevertWhen_TooManyModels() public {
        uint256[] memory hosted = new uint256[](33); // checked before approval, so ids need not exist
        _stake(node, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.TooManyModels.selector, 33, 32));
        _register(node, "node-1", hosted);
    }

    function test_register_acceptsMaxHostedModels() public {
        uint256[] memory hosted = _approvedModels(32);
        _stake(node, MIN_STAKE);
        _register(node, "node-1", hosted);
        vm.assertEq(nodes.getNode(node).hostedModels.length, 32, "32 hosted");
    }

    // ------------------------------------------------------------------ updates

    function test_updateEndpoint_storesAndEmits() public {
        _registerNode(node, "node-1");
        vm.expectEmit(true, false, false, true, address(nodes));
        emit INodeRegistry.EndpointUpdated(node, "https://node-1.example:443");
        vm.prank(node);
        nodes.updateEndpoint("https://node-1.example:443");
        vm.assertEq(nodes.getNode(node).endpoint, "https://node-1.example:443", "endpoint");
    }

    function test_RevertWhen_updateEndpointNotRegistered() public {
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.NotRegistered.selector, node));
        vm.prank(node);
        nodes.updateEndpoint(ENDPOINT);
    }

    function test_RevertWhen_updateEndpointInvalid() public {
        _registerNode(node, "node-1");
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.InvalidNodeField.selector, "endpoint"));
        vm.prank(node);
        nodes.updateEndpoint("");
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.InvalidNodeField.selector, "endpoint"));
        vm.prank(node);
        nodes.updateEndpoint(_repeat("e", 257));
        vm.assertEq(nodes.getNode(node).endpoint, ENDPOINT, "unchanged");
    }

    function test_updateHardware_storesAndEmits() public {
        _registerNode(node, "node-1");
        vm.expectEmit(true, false, false, true, address(nodes));
        emit INodeRegistry.HardwareUpdated(node, "{\"gpu\":\"h100\"}");
        vm.prank(node);
        nodes.updateHardware("{\"gpu\":\"h100\"}");
        vm.assertEq(nodes.getNode(node).hardware, "{\"gpu\":\"h100\"}", "hardware");
    }

    function test_RevertWhen_updateHardwareNotRegistered() public {
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.NotRegistered.selector, node));
        vm.prank(node);
        nodes.updateHardware(HARDWARE);
    }

    function test_RevertWhen_updateHardwareInvalid() public {
        _registerNode(node, "node-1");
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.InvalidNodeField.selector, "hardware"));
        vm.prank(node);
        nodes.updateHardware("");
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.InvalidNodeField.selector, "hardware"));
        vm.prank(node);
        nodes.updateHardware(_repeat("h", 1025));
        vm.assertEq(nodes.getNode(node).hardware, HARDWARE, "unchanged");
    }

    function test_setHostedModels_replacesListAndEmits() public {
        _registerNode(node, "node-1");
        uint256 other = _approvedModel("other", "bafkreiother");
        uint256[] memory hosted = _ids(other, modelId);
        vm.expectEmit(true, false, false, true, address(nodes));
        emit INodeRegistry.HostedModelsUpdated(node, hosted);
        vm.prank(node);
        nodes.setHostedModels(hosted);
        uint256[] memory stored = nodes.getNode(node).hostedModels;
        vm.assertEq(stored.length, 2, "two");
        vm.assertEq(stored[0], other, "first");
        vm.assertEq(stored[1], modelId, "second");
    }

    function test_setHostedModels_canClearList() public {
        _registerNode(node, "node-1");
        vm.prank(node);
        nodes.setHostedModels(new uint256[](0));
        vm.assertEq(nodes.getNode(node).hostedModels.length, 0, "cleared");
    }

    function test_RevertWhen_setHostedModelsNotRegistered() public {
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.NotRegistered.selector, node));
        vm.prank(node);
        nodes.setHostedModels(_ids(modelId));
    }

    function test_RevertWhen_setHostedModelsUnapproved() public {
        _registerNode(node, "node-1");
        vm.prank(publisher);
        uint256 proposed = models.propose(_spec("unapproved", "bafkreiunapproved"));
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.ModelNotHostable.selector, proposed));
        vm.prank(node);
        nodes.setHostedModels(_ids(proposed));
        vm.assertEq(nodes.getNode(node).hostedModels[0], modelId, "unchanged");
    }

    function test_RevertWhen_setHostedModelsDuplicate() public {
        _registerNode(node, "node-1");
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.ModelNotHostable.selector, modelId));
        vm.prank(node);
        nodes.setHostedModels(_ids(modelId, modelId));
    }

    function test_RevertWhen_setHostedModelsTooMany() public {
        _registerNode(node, "node-1");
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.TooManyModels.selector, 40, 32));
        vm.prank(node);
        nodes.setHostedModels(new uint256[](40));
    }

    // ------------------------------------------------------------------ deregister

    function test_deregister_keepsStakeAndKnown() public {
        _registerNode(node, "node-1");
        vm.expectEmit(true, false, false, true, address(nodes));
        emit INodeRegistry.NodeDeregistered(node);
        vm.prank(node);
        nodes.deregister();
        INodeRegistry.Node memory n = nodes.getNode(node);
        vm.assertFalse(n.registered, "not registered");
        vm.assertEq(n.stake, MIN_STAKE, "stake stays");
        vm.assertFalse(nodes.isActive(node), "inactive");
        vm.assertTrue(_payable(node), "still known for settlement");
        vm.assertEq(_operators().length, 1, "still listed");
    }

    function test_RevertWhen_deregisterNotRegistered() public {
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.NotRegistered.selector, node));
        vm.prank(node);
        nodes.deregister();
    }

    function test_RevertWhen_deregisterTwice() public {
        _registerNode(node, "node-1");
        vm.prank(node);
        nodes.deregister();
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.NotRegistered.selector, node));
        vm.prank(node);
        nodes.deregister();
    }

    function test_RevertWhen_updateAfterDeregister() public {
        _registerNode(node, "node-1");
        vm.prank(node);
        nodes.deregister();
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.NotRegistered.selector, node));
        vm.prank(node);
        nodes.updateEndpoint("http://new");
    }

    function test_register_afterDeregisterKeepsNodeId() public {
        _registerNode(node, "node-1");
        vm.prank(node);
        nodes.deregister();
        vm.warp(block.timestamp + 1 days);
        _register(node, "node-1", _ids(modelId));

        INodeRegistry.Node memory n = nodes.getNode(node);
        vm.assertTrue(n.registered, "registered again");
        vm.assertEq(n.nodeId, "node-1", "same id");
        vm.assertEq(uint256(n.registeredAt), block.timestamp, "registeredAt refreshed");
        vm.assertEq(nodes.nodeIdOwner(keccak256("node-1")), node, "id still owned");
        vm.assertEq(_operators().length, 1, "listed once");
        vm.assertTrue(nodes.isActive(node), "active");
        // Re-registering under the same id does not release it.
        _stake(node2, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.NodeIdTaken.selector, "node-1", node));
        _register(node2, "node-1", _ids(modelId));
    }

    function test_register_afterDeregisterUnderNewIdReleasesOldId() public {
        _registerNode(node, "node-1");
        vm.prank(node);
        nodes.deregister();
        _register(node, "node-1-renamed", _ids(modelId));
        vm.assertEq(nodes.getNode(node).nodeId, "node-1-renamed", "renamed");
        vm.assertEq(nodes.nodeIdOwner(keccak256("node-1-renamed")), node, "new id owned");
        // A returning operator that picks a new id gives the old one back, so ids are not hoarded.
        vm.assertEq(nodes.nodeIdOwner(keccak256("node-1")), address(0), "old id released");
        vm.assertEq(_operators().length, 1, "listed once");
        vm.assertTrue(nodes.isActive(node), "active");
    }

    function test_reRegister_withNewId_releasesOldId() public {
        _registerNode(node, "node-1");
        vm.prank(node);
        nodes.deregister();
        _register(node, "node-2", _ids(modelId));

        // Another operator can now take the released id.
        _registerNode(node2, "node-1");
        vm.assertEq(nodes.nodeIdOwner(keccak256("node-1")), node2, "old id now owned by node2");
        vm.assertEq(nodes.nodeIdOwner(keccak256("node-2")), node, "node keeps its new id");
        vm.assertEq(nodes.getNode(node2).nodeId, "node-1", "node2 registered under it");
        vm.assertTrue(nodes.isActive(node2), "node2 active");
        vm.assertEq(_operators().length, 2, "both listed");

        // The released id is gone for good for its former owner.
        vm.prank(node);
        nodes.deregister();
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.NodeIdTaken.selector, "node-1", node2));
        _register(node, "node-1", _ids(modelId));
        vm.assertEq(nodes.nodeIdOwner(keccak256("node-2")), node, "failed attempt keeps node-2 reserved");
    }

    function test_reRegister_backToFormerId_releasesTheIntermediateOne() public {
        _registerNode(node, "node-1");
        vm.prank(node);
        nodes.deregister();
        _register(node, "node-2", _ids(modelId));
        vm.prank(node);
        nodes.deregister();
        // node-1 was released but nobody took it, so its former owner may claim it again.
        _register(node, "node-1", _ids(modelId));
        vm.assertEq(nodes.getNode(node).nodeId, "node-1", "back to node-1");
        vm.assertEq(nodes.nodeIdOwner(keccak256("node-1")), node, "node-1 owned again");
        vm.assertEq(nodes.nodeIdOwner(keccak256("node-2")), address(0), "node-2 released");
        vm.assertEq(_operators().length, 1, "listed once");
    }

    function test_RevertWhen_reRegisterUnderNewIdFails_oldIdStaysReserved() public {
        _registerNode(node, "node-1");
        vm.prank(node);
        nodes.deregister();
        vm.prank(curator);
        models.deprecate(modelId);
        // The id is released only as part of a successful registration.
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.ModelNotHostable.selector, modelId));
        _register(node, "node-2", _ids(modelId));
        vm.assertEq(nodes.nodeIdOwner(keccak256("node-1")), node, "old id still reserved");
        vm.assertEq(nodes.nodeIdOwner(keccak256("node-2")), address(0), "new id not claimed");
        _stake(node2, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.NodeIdTaken.selector, "node-1", node));
        _register(node2, "node-1", new uint256[](0));
    }

    // ------------------------------------------------------------------ unbonding

    function test_requestUnbond_movesStakeAndSetsReadyAt() public {
        _stake(node, 2000 ether);
        uint64 readyAt = uint64(block.timestamp + UNBONDING_PERIOD);
        vm.expectEmit(true, false, false, true, address(nodes));
        emit INodeRegistry.UnbondRequested(node, 500 ether, 500 ether, readyAt);
        _unbond(node, 500 ether);
        INodeRegistry.Node memory n = nodes.getNode(node);
        vm.assertEq(n.stake, 1500 ether, "stake");
        vm.assertEq(n.unbonding, 500 ether, "unbonding");
        vm.assertEq(uint256(n.unbondingReadyAt), uint256(readyAt), "readyAt");
        vm.assertEq(token.balanceOf(address(nodes)), 2000 ether, "tokens stay");
    }

    function test_requestUnbond_againAccumulatesAndRestartsPeriod() public {
        _stake(node, 2000 ether);
        _unbond(node, 500 ether);
        vm.warp(block.timestamp + 3 days);
        _unbond(node, 300 ether);
        INodeRegistry.Node memory n = nodes.getNode(node);
        vm.assertEq(n.unbonding, 800 ether, "accumulated");
        vm.assertEq(n.stake, 1200 ether, "stake");
        vm.assertEq(uint256(n.unbondingReadyAt), block.timestamp + UNBONDING_PERIOD, "period restarted");
    }

    function test_requestUnbond_allStake() public {
        _stake(node, 2000 ether);
        _unbond(node, 2000 ether);
        vm.assertEq(nodes.getNode(node).stake, 0, "nothing left");
        vm.assertEq(nodes.getNode(node).unbonding, 2000 ether, "all unbonding");
    }

    function test_RevertWhen_requestUnbondZero() public {
        _stake(node, 2000 ether);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.ZeroAmount.selector));
        _unbond(node, 0);
    }

    function test_RevertWhen_InsufficientStake_unbond() public {
        _stake(node, 2000 ether);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.InsufficientStake.selector, 2000 ether + 1, 2000 ether));
        _unbond(node, 2000 ether + 1);
    }

    function test_RevertWhen_InsufficientStake_unbondingAlreadyMoved() public {
        _stake(node, 2000 ether);
        _unbond(node, 1500 ether);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.InsufficientStake.selector, 600 ether, 500 ether));
        _unbond(node, 600 ether);
    }

    function test_requestUnbond_dropsActiveBelowMinimum() public {
        _registerNode(node, "node-1");
        _unbond(node, 1);
        vm.assertFalse(nodes.isActive(node), "inactive below minimum");
        vm.assertTrue(nodes.getNode(node).registered, "still registered");
        vm.prank(node);
        nodes.cancelUnbond();
        vm.assertTrue(nodes.isActive(node), "active again after cancel");
    }

    function test_cancelUnbond_restoresStake() public {
        _stake(node, 2000 ether);
        _unbond(node, 700 ether);
        vm.expectEmit(true, false, false, true, address(nodes));
        emit INodeRegistry.UnbondCancelled(node, 700 ether);
        vm.prank(node);
        nodes.cancelUnbond();
        INodeRegistry.Node memory n = nodes.getNode(node);
        vm.assertEq(n.stake, 2000 ether, "stake back");
        vm.assertEq(n.unbonding, 0, "nothing unbonding");
        vm.assertEq(uint256(n.unbondingReadyAt), 0, "readyAt cleared");
    }

    function test_RevertWhen_NothingUnbonding_cancel() public {
        _stake(node, 2000 ether);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.NothingUnbonding.selector, node));
        vm.prank(node);
        nodes.cancelUnbond();
    }

    function test_RevertWhen_NothingUnbonding_withdraw() public {
        _stake(node, 2000 ether);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.NothingUnbonding.selector, node));
        vm.prank(node);
        nodes.withdrawStake();
    }

    function test_RevertWhen_NothingUnbonding_withdrawTwice() public {
        _stake(node, 2000 ether);
        _unbond(node, 500 ether);
        vm.warp(block.timestamp + UNBONDING_PERIOD);
        vm.prank(node);
        nodes.withdrawStake();
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.NothingUnbonding.selector, node));
        vm.prank(node);
        nodes.withdrawStake();
        vm.assertEq(token.balanceOf(node), 500 ether, "paid once");
    }

    function test_RevertWhen_UnbondingNotReady_oneSecondEarly() public {
        _stake(node, 2000 ether);
        _unbond(node, 500 ether);
        uint256 readyAt = block.timestamp + UNBONDING_PERIOD;
        vm.warp(readyAt - 1);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.UnbondingNotReady.selector, readyAt, readyAt - 1));
        vm.prank(node);
        nodes.withdrawStake();
    }

    function test_RevertWhen_UnbondingNotReady_immediately() public {
        _stake(node, 2000 ether);
        _unbond(node, 500 ether);
        uint256 readyAt = block.timestamp + UNBONDING_PERIOD;
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.UnbondingNotReady.selector, readyAt, block.timestamp));
        vm.prank(node);
        nodes.withdrawStake();
    }

    function test_withdrawStake_atReadyAtPaysOut() public {
        _stake(node, 2000 ether);
        _unbond(node, 500 ether);
        vm.warp(block.timestamp + UNBONDING_PERIOD);
        vm.expectEmit(true, false, false, true, address(nodes));
        emit INodeRegistry.StakeWithdrawn(node, 500 ether);
        vm.prank(node);
        nodes.withdrawStake();
        INodeRegistry.Node memory n = nodes.getNode(node);
        vm.assertEq(token.balanceOf(node), 500 ether, "paid");
        vm.assertEq(token.balanceOf(address(nodes)), 1500 ether, "rest held");
        vm.assertEq(n.unbonding, 0, "unbonding cleared");
        vm.assertEq(uint256(n.unbondingReadyAt), 0, "readyAt cleared");
        vm.assertEq(n.stake, 1500 ether, "stake untouched");
    }

    function test_RevertWhen_UnbondingNotReady_afterRestartedPeriod() public {
        _stake(node, 2000 ether);
        _unbond(node, 500 ether);
        vm.warp(block.timestamp + UNBONDING_PERIOD - 1);
        _unbond(node, 1); // restarts the clock for everything unbonding
        uint256 readyAt = block.timestamp + UNBONDING_PERIOD;
        vm.warp(block.timestamp + 1);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.UnbondingNotReady.selector, readyAt, block.timestamp));
        vm.prank(node);
        nodes.withdrawStake();
    }

    function test_setUnbondingPeriod_keepsPendingReadyAt() public {
        _stake(node, 2000 ether);
        _unbond(node, 500 ether);
        uint256 readyAt = block.timestamp + UNBONDING_PERIOD;
        vm.prank(admin);
        nodes.setUnbondingPeriod(30 days);
        vm.assertEq(uint256(nodes.getNode(node).unbondingReadyAt), readyAt, "pending request unchanged");
        vm.warp(readyAt);
        vm.prank(node);
        nodes.withdrawStake();
        vm.assertEq(token.balanceOf(node), 500 ether, "withdrawn on the old schedule");
    }

    function testFuzz_unbond_withdrawReturnsExactly(uint256 stakeAmount, uint256 unbondAmount, uint256 wait) public {
        stakeAmount = bound(stakeAmount, 1, 1e30);
        unbondAmount = bound(unbondAmount, 1, stakeAmount);
        wait = bound(wait, 0, 2 * UNBONDING_PERIOD);
        _stake(node, stakeAmount);
        _unbond(node, unbondAmount);
        uint256 readyAt = block.timestamp + UNBONDING_PERIOD;
        vm.warp(block.timestamp + wait);
        if (block.timestamp < readyAt) {
            vm.expectRevert(abi.encodeWithSelector(INodeRegistry.UnbondingNotReady.selector, readyAt, block.timestamp));
            vm.prank(node);
            nodes.withdrawStake();
            vm.assertEq(nodes.getNode(node).unbonding, unbondAmount, "still unbonding");
        } else {
            vm.prank(node);
            nodes.withdrawStake();
            vm.assertEq(token.balanceOf(node), unbondAmount, "exact payout");
            vm.assertEq(nodes.getNode(node).unbonding, 0, "cleared");
        }
        vm.assertEq(nodes.getNode(node).stake, stakeAmount - unbondAmount, "stake rest");
        vm.assertEq(
            token.balanceOf(address(nodes)),
            nodes.getNode(node).stake + nodes.getNode(node).unbonding,
            "registry holds exactly its ledger"
        );
    }

    function testFuzz_unbond_cancelIsExactInverse(uint256 stakeAmount, uint256 a, uint256 b) public {
        stakeAmount = bound(stakeAmount, 2, 1e30);
        a = bound(a, 1, stakeAmount - 1);
        b = bound(b, 1, stakeAmount - a);
        _stake(node, stakeAmount);
        _unbond(node, a);
        _unbond(node, b);
        vm.assertEq(nodes.getNode(node).unbonding, a + b, "unbonding sum");
        vm.prank(node);
        nodes.cancelUnbond();
        vm.assertEq(nodes.getNode(node).stake, stakeAmount, "stake restored");
        vm.assertEq(nodes.getNode(node).unbonding, 0, "nothing unbonding");
    }

    // ------------------------------------------------------------------ slashing

    function test_slash_takesFromStakeToVault() public {
        _registerNode(node, "node-1");
        _stake(node, 500 ether);
        vm.expectEmit(true, true, false, true, address(nodes));
        emit INodeRegistry.NodeSlashed(node, slasher, 400 ether, 0, "bad output");
        vm.prank(slasher);
        nodes.slash(node, 400 ether, "bad output");
        vm.assertEq(nodes.getNode(node).stake, 1100 ether, "stake reduced");
        vm.assertEq(token.balanceOf(address(vault)), 400 ether, "vault received");
        vm.assertEq(token.balanceOf(address(nodes)), 1100 ether, "registry keeps the rest");
        INodeRegistry.Reputation memory rep = nodes.reputationOf(node);
        vm.assertEq(uint256(rep.slashCount), 1, "slash count");
        vm.assertEq(uint256(rep.totalSlashed), 400 ether, "total slashed");
    }

    function test_slash_takesStakeThenUnbonding() public {
        _stake(node, 2000 ether);
        _unbond(node, 800 ether); // stake 1200, unbonding 800
        vm.expectEmit(true, true, false, true, address(nodes));
        emit INodeRegistry.NodeSlashed(node, slasher, 1200 ether, 300 ether, "double sign");
        vm.prank(slasher);
        nodes.slash(node, 1500 ether, "double sign");
        INodeRegistry.Node memory n = nodes.getNode(node);
        vm.assertEq(n.stake, 0, "stake emptied first");
        vm.assertEq(n.unbonding, 500 ether, "rest from unbonding");
        vm.assertEq(token.balanceOf(address(vault)), 1500 ether, "vault received all");
    }

    function test_slash_reachesEverythingIncludingUnbonding() public {
        _stake(node, 2000 ether);
        _unbond(node, 2000 ether);
        vm.prank(slasher);
        nodes.slash(node, 2000 ether, "fraud");
        vm.assertEq(nodes.getNode(node).unbonding, 0, "unbonding taken");
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.NothingUnbonding.selector, node));
        vm.prank(node);
        nodes.withdrawStake();
    }

    function test_slash_countsEverySlash() public {
        _stake(node, 2000 ether);
        vm.startPrank(slasher);
        nodes.slash(node, 1 ether, "a");
        nodes.slash(node, 2 ether, "b");
        nodes.slash(node, 3 ether, "c");
        vm.stopPrank();
        INodeRegistry.Reputation memory rep = nodes.reputationOf(node);
        vm.assertEq(uint256(rep.slashCount), 3, "three slashes");
        vm.assertEq(uint256(rep.totalSlashed), 6 ether, "sum");
    }

    function test_slash_dropsActiveBelowMinimum() public {
        _registerNode(node, "node-1");
        vm.prank(slasher);
        nodes.slash(node, 1, "minor");
        vm.assertFalse(nodes.isActive(node), "inactive below minimum");
        vm.assertTrue(nodes.getNode(node).registered, "still registered");
        _stake(node, 1);
        vm.assertTrue(nodes.isActive(node), "topped up");
    }

    function test_slash_byAdminWhoHoldsSlasherRole() public {
        _stake(node, 2000 ether);
        vm.prank(admin);
        nodes.slash(node, 10 ether, "admin");
        vm.assertEq(nodes.getNode(node).stake, 1990 ether, "slashed");
    }

    function test_slash_doesNotTouchOtherOperators() public {
        _stake(node, 2000 ether);
        _stake(node2, 2000 ether);
        vm.prank(slasher);
        nodes.slash(node, 2000 ether, "x");
        vm.assertEq(nodes.getNode(node2).stake, 2000 ether, "other untouched");
        vm.prank(node2);
        nodes.requestUnbond(2000 ether);
        vm.warp(block.timestamp + UNBONDING_PERIOD);
        vm.prank(node2);
        nodes.withdrawStake();
        vm.assertEq(token.balanceOf(node2), 2000 ether, "other withdraws in full");
    }

    function test_RevertWhen_slashZero() public {
        _stake(node, 2000 ether);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.ZeroAmount.selector));
        vm.prank(slasher);
        nodes.slash(node, 0, "x");
    }

    function test_slash_moreThanAvailableTakesAll() public {
        _stake(node, 2000 ether);
        _unbond(node, 500 ether);
        vm.prank(slasher);
        uint256 taken = nodes.slash(node, 2000 ether + 1, "x");
        vm.assertEq(taken, 2000 ether, "everything there");
        vm.assertEq(nodes.getNode(node).stake + nodes.getNode(node).unbonding, 0, "nothing left");
        vm.assertEq(uint256(nodes.reputationOf(node).totalSlashed), 2000 ether, "what was taken is recorded");
    }

    function test_slash_afterWithdrawalRecordsButTakesNothing() public {
        _stake(node, 2000 ether);
        _unbond(node, 2000 ether);
        vm.warp(block.timestamp + UNBONDING_PERIOD);
        vm.prank(node);
        nodes.withdrawStake();
        vm.prank(slasher);
        uint256 taken = nodes.slash(node, 1, "too late");
        vm.assertEq(taken, 0, "nothing to take");
        vm.assertEq(uint256(nodes.reputationOf(node).slashCount), 1, "the slash still counts");
        vm.assertEq(token.balanceOf(address(vault)), 0, "nothing moved");
    }

    function test_RevertWhen_slashByNonSlasher() public {
        _stake(node, 2000 ether);
        bytes32 role = nodes.SLASHER_ROLE();
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, stranger, role)
        );
        vm.prank(stranger);
        nodes.slash(node, 1 ether, "x");
        vm.assertEq(nodes.getNode(node).stake, 2000 ether, "untouched");
    }

    function testFuzz_slash_takesStakeThenUnbonding(uint256 unbondAmount, uint256 slashAmount) public {
        uint256 total = 5000 ether;
        unbondAmount = bound(unbondAmount, 0, total);
        slashAmount = bound(slashAmount, 1, total);
        _stake(node, total);
        if (unbondAmount != 0) _unbond(node, unbondAmount);
        uint256 stakeBefore = total - unbondAmount;

        uint256 expectedFromStake = slashAmount < stakeBefore ? slashAmount : stakeBefore;
        uint256 expectedFromUnbonding = slashAmount - expectedFromStake;
        vm.expectEmit(true, true, false, true, address(nodes));
        emit INodeRegistry.NodeSlashed(node, slasher, expectedFromStake, expectedFromUnbonding, "fuzz");
        vm.prank(slasher);
        nodes.slash(node, slashAmount, "fuzz");

        INodeRegistry.Node memory n = nodes.getNode(node);
        vm.assertEq(n.stake, stakeBefore - expectedFromStake, "stake");
        vm.assertEq(n.unbonding, unbondAmount - expectedFromUnbonding, "unbonding");
        vm.assertEq(n.stake + n.unbonding + slashAmount, total, "nothing created or lost");
        vm.assertEq(token.balanceOf(address(vault)), slashAmount, "vault received the slash");
        vm.assertEq(token.balanceOf(address(nodes)), n.stake + n.unbonding, "registry solvent");
    }

    function testFuzz_slash_moreThanAvailableTakesExactlyAll(uint256 unbondAmount, uint256 excess) public {
        uint256 total = 5000 ether;
        unbondAmount = bound(unbondAmount, 1, total);
        excess = bound(excess, 1, 1e30);
        _stake(node, total);
        _unbond(node, unbondAmount);
        vm.expectEmit(true, true, false, true, address(nodes));
        emit INodeRegistry.NodeSlashed(node, slasher, total - unbondAmount, unbondAmount, "x");
        vm.prank(slasher);
        vm.assertEq(nodes.slash(node, total + excess, "x"), total, "taken");
        vm.assertEq(token.balanceOf(address(vault)), total, "vault received all");
        vm.assertEq(token.balanceOf(address(nodes)), 0, "registry emptied");
    }

    // ------------------------------------------------------------------ reputation

    function test_recordSettlement_bySettlementAccumulates() public {
        vm.warp(1_700_000_900);
        vm.expectEmit(true, false, false, true, address(nodes));
        emit INodeRegistry.SettlementRecorded(node, 1000, 2 ether, 1);
        vm.prank(address(settlement));
        nodes.recordSettlement(node, 1000, 2 ether, 1);
        vm.warp(1_700_001_000);
        vm.prank(address(settlement));
        nodes.recordSettlement(node, 500, 1 ether, 2);

        INodeRegistry.Reputation memory rep = nodes.reputationOf(node);
        vm.assertEq(uint256(rep.tokensServed), 1500, "tokens");
        vm.assertEq(uint256(rep.volumePaid), 3 ether, "volume");
        vm.assertEq(uint256(rep.receiptsSettled), 3, "receipts");
        vm.assertEq(uint256(rep.lastSettledAt), 1_700_001_000, "last settled");
        vm.assertEq(uint256(rep.slashCount), 0, "no slash");
    }

    function test_RevertWhen_recordSettlementByStranger() public {
        bytes32 role = nodes.SETTLEMENT_ROLE();
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, stranger, role)
        );
        vm.prank(stranger);
        nodes.recordSettlement(node, 1000, 2 ether, 1);
    }

    function test_RevertWhen_recordSettlementByAdminOrNodeItself() public {
        bytes32 role = nodes.SETTLEMENT_ROLE();
        vm.expectRevert(abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, admin, role));
        vm.prank(admin);
        nodes.recordSettlement(node, 1000, 2 ether, 1);
        vm.expectRevert(abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, node, role));
        vm.prank(node);
        nodes.recordSettlement(node, 1000, 2 ether, 1);
        vm.assertEq(uint256(nodes.reputationOf(node).receiptsSettled), 0, "no reputation");
    }

    // ------------------------------------------------------------------ admin setters

    function test_setMinStake_atBothBounds() public {
        uint256 maxMin = nodes.MAX_MIN_STAKE();
        vm.expectEmit(false, false, false, true, address(nodes));
        emit INodeRegistry.MinStakeChanged(MIN_STAKE, 1);
        vm.prank(admin);
        nodes.setMinStake(1);
        vm.assertEq(nodes.minStake(), 1, "lower bound accepted");
        vm.prank(admin);
        nodes.setMinStake(maxMin);
        vm.assertEq(nodes.minStake(), maxMin, "upper bound accepted");
    }

    function test_RevertWhen_setMinStakeZero() public {
        uint256 maxMin = nodes.MAX_MIN_STAKE();
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.ParameterOutOfBounds.selector, "minStake", 0, 1, maxMin));
        vm.prank(admin);
        nodes.setMinStake(0);
        vm.assertEq(nodes.minStake(), MIN_STAKE, "unchanged");
    }

    function test_RevertWhen_setMinStakeAboveMaximum() public {
        uint256 maxMin = nodes.MAX_MIN_STAKE();
        vm.expectRevert(
            abi.encodeWithSelector(INodeRegistry.ParameterOutOfBounds.selector, "minStake", maxMin + 1, 1, maxMin)
        );
        vm.prank(admin);
        nodes.setMinStake(maxMin + 1);
    }

    function test_setMinStake_raisingDeactivatesNodes() public {
        _registerNode(node, "node-1");
        vm.prank(admin);
        nodes.setMinStake(MIN_STAKE + 1);
        vm.assertFalse(nodes.isActive(node), "below the new minimum");
        vm.assertTrue(nodes.getNode(node).registered, "still registered");
    }

    function test_setUnbondingPeriod_atBothBounds() public {
        vm.expectEmit(false, false, false, true, address(nodes));
        emit INodeRegistry.UnbondingPeriodChanged(UNBONDING_PERIOD, 1 hours);
        vm.prank(admin);
        nodes.setUnbondingPeriod(1 hours);
        vm.assertEq(nodes.unbondingPeriod(), 1 hours, "lower bound accepted");
        vm.prank(admin);
        nodes.setUnbondingPeriod(90 days);
        vm.assertEq(nodes.unbondingPeriod(), 90 days, "upper bound accepted");
    }

    function test_RevertWhen_setUnbondingPeriodBelowMinimum() public {
        vm.expectRevert(
            abi.encodeWithSelector(
                INodeRegistry.ParameterOutOfBounds.selector, "unbondingPeriod", 1 hours - 1, 1 hours, 90 days
            )
        );
        vm.prank(admin);
        nodes.setUnbondingPeriod(1 hours - 1);
        vm.assertEq(nodes.unbondingPeriod(), UNBONDING_PERIOD, "unchanged");
    }

    function test_RevertWhen_setUnbondingPeriodAboveMaximum() public {
        vm.expectRevert(
            abi.encodeWithSelector(
                INodeRegistry.ParameterOutOfBounds.selector, "unbondingPeriod", 90 days + 1, 1 hours, 90 days
            )
        );
        vm.prank(admin);
        nodes.setUnbondingPeriod(90 days + 1);
    }

    function test_setUnbondingPeriod_appliesToNewRequests() public {
        vm.prank(admin);
        nodes.setUnbondingPeriod(1 hours);
        _stake(node, 2000 ether);
        _unbond(node, 1 ether);
        vm.assertEq(uint256(nodes.getNode(node).unbondingReadyAt), block.timestamp + 1 hours, "new period");
    }

    function test_setUnbondingPeriod_lowerNeverShortensPendingUnbonding() public {
        _stake(node, 2000 ether);
        _unbond(node, 1000 ether);
        uint256 readyAt = nodes.getNode(node).unbondingReadyAt;
        vm.prank(admin);
        nodes.setUnbondingPeriod(1 hours);
        _unbond(node, 1);
        vm.assertEq(uint256(nodes.getNode(node).unbondingReadyAt), readyAt, "ready time kept");
        // Once the old ready time has passed, a new request gets the new period from now.
        vm.warp(readyAt + 1);
        _unbond(node, 1);
        vm.assertEq(uint256(nodes.getNode(node).unbondingReadyAt), block.timestamp + 1 hours, "new period");
    }

    function test_RevertWhen_adminSettersByNonAdmin() public {
        bytes32 role = nodes.DEFAULT_ADMIN_ROLE();
        bytes memory err =
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, slasher, role);
        vm.expectRevert(err);
        vm.prank(slasher);
        nodes.setMinStake(1 ether);
        vm.expectRevert(err);
        vm.prank(slasher);
        nodes.setUnbondingPeriod(1 days);
        vm.assertEq(nodes.minStake(), MIN_STAKE, "min stake unchanged");
        vm.assertEq(nodes.unbondingPeriod(), UNBONDING_PERIOD, "period unchanged");
        vm.assertEq(nodes.slashRecipient(), address(vault), "recipient unchanged");
    }

    function testFuzz_setMinStake_boundsEnforced(uint256 value) public {
        uint256 maxMin = nodes.MAX_MIN_STAKE();
        value = bound(value, 0, 2 * maxMin);
        if (value == 0 || value > maxMin) {
            vm.expectRevert(
                abi.encodeWithSelector(INodeRegistry.ParameterOutOfBounds.selector, "minStake", value, 1, maxMin)
            );
            vm.prank(admin);
            nodes.setMinStake(value);
            vm.assertEq(nodes.minStake(), MIN_STAKE, "unchanged");
        } else {
            vm.prank(admin);
            nodes.setMinStake(value);
            vm.assertEq(nodes.minStake(), value, "set");
        }
    }

    function testFuzz_setUnbondingPeriod_boundsEnforced(uint256 value) public {
        value = bound(value, 0, 200 days);
        if (value < 1 hours || value > 90 days) {
            vm.expectRevert(
                abi.encodeWithSelector(
                    INodeRegistry.ParameterOutOfBounds.selector, "unbondingPeriod", value, 1 hours, 90 days
                )
            );
            vm.prank(admin);
            nodes.setUnbondingPeriod(value);
            vm.assertEq(nodes.unbondingPeriod(), UNBONDING_PERIOD, "unchanged");
        } else {
            vm.prank(admin);
            nodes.setUnbondingPeriod(value);
            vm.assertEq(nodes.unbondingPeriod(), value, "set");
        }
    }

    // ------------------------------------------------------------------ views

    function test_operators_listsInOrderOfFirstRegistration() public {
        address third = address(0x3333);
        _registerNode(node2, "node-2");
        _registerNode(node, "node-1");
        _stake(third, MIN_STAKE); // staked but never registered
        vm.prank(node2);
        nodes.deregister();
        _register(node2, "node-2", _ids(modelId));

        address[] memory ops = _operators();
        vm.assertEq(ops.length, 2, "two operators");
        vm.assertEq(ops[0], node2, "first registered first");
        vm.assertEq(ops[1], node, "second");
    }

    function test_operatorsPage_pagesInOrder() public {
        address[5] memory ops = [address(0x1001), address(0x1002), address(0x1003), address(0x1004), address(0x1005)];
        for (uint256 i; i < ops.length; ++i) {
            _stake(ops[i], MIN_STAKE);
            _register(ops[i], string(abi.encodePacked("node-", bytes1(uint8(0x61 + i)))), _ids(modelId));
        }
        vm.assertEq(nodes.operatorCount(), 5, "count");
        address[] memory page = nodes.operatorsPage(1, 2);
        vm.assertEq(page.length, 2, "page size");
        vm.assertEq(page[0], ops[1], "second");
        vm.assertEq(page[1], ops[2], "third");
        vm.assertEq(nodes.operatorsPage(4, 10).length, 1, "short last page");
        vm.assertEq(nodes.operatorsPage(5, 10).length, 0, "past the end");
        vm.assertEq(nodes.operatorsPage(type(uint256).max, type(uint256).max).length, 0, "far past the end");
        vm.assertEq(nodes.operatorsPage(0, 0).length, 0, "empty page");
    }

    function test_settlementCapacity_deregisteredNodeIsPayableForOneUnbondingPeriod() public {
        _registerNode(node, "node-1");
        vm.prank(node);
        nodes.deregister();
        vm.assertEq(uint256(nodes.getNode(node).deregisteredAt), block.timestamp, "deregisteredAt");
        vm.warp(block.timestamp + UNBONDING_PERIOD);
        vm.assertTrue(_payable(node), "payable through the grace period");
        vm.warp(block.timestamp + 1);
        vm.assertFalse(_payable(node), "not after it");
        _register(node, "node-1", _ids(modelId));
        vm.assertTrue(_payable(node), "payable again once registered");
        vm.assertEq(uint256(nodes.getNode(node).deregisteredAt), 0, "cleared");
    }

    function test_settlementCapacity_needsStakeToAnswerForWork() public {
        _registerNode(node, "node-1");
        _unbond(node, MIN_STAKE);
        vm.assertTrue(_payable(node), "unbonding stake still answers");
        vm.warp(block.timestamp + UNBONDING_PERIOD);
        vm.prank(node);
        nodes.withdrawStake();
        vm.assertFalse(_payable(node), "no stake left");
        _stake(node, 1);
        vm.assertTrue(_payable(node), "any stake again");
        vm.prank(slasher);
        nodes.slash(node, 1, "x");
        vm.assertFalse(_payable(node), "slashed to zero");
    }

    function test_settlementCapacity_roomIsWhatTheCountersCanStillHold() public {
        _registerNode(node, "node-1");
        vm.prank(address(settlement));
        nodes.recordSettlement(node, 1000, 2 ether, 1);
        (, uint256 tokensRoom, uint256 volumeRoom) = nodes.settlementCapacity(node);
        vm.assertEq(tokensRoom, type(uint128).max - 1000, "tokens room");
        vm.assertEq(volumeRoom, type(uint128).max - 2 ether, "volume room");
    }

    function test_getNode_emptyForUnknownOperator() public view {
        INodeRegistry.Node memory n = nodes.getNode(stranger);
        vm.assertEq(bytes(n.nodeId).length, 0, "no id");
        vm.assertEq(n.stake, 0, "no stake");
        vm.assertFalse(n.registered, "not registered");
        vm.assertFalse(nodes.isActive(stranger), "not active");
        vm.assertFalse(_payable(stranger), "not known");
        vm.assertEq(uint256(nodes.reputationOf(stranger).receiptsSettled), 0, "no reputation");
    }

    function test_isActive_requiresRegistrationAndMinimumStake() public {
        _stake(node, 5000 ether);
        vm.assertFalse(nodes.isActive(node), "stake alone is not active");
        _register(node, "node-1", _ids(modelId));
        vm.assertTrue(nodes.isActive(node), "registered with stake");
        _unbond(node, 4000 ether);
        vm.assertTrue(nodes.isActive(node), "exactly the minimum left");
        _unbond(node, 1);
        vm.assertFalse(nodes.isActive(node), "one wei below");
    }

    function test_deprecatedModel_staysInHostedListButCannotBeSetAgain() public {
        _registerNode(node, "node-1");
        vm.prank(curator);
        models.deprecate(modelId);
        vm.assertEq(nodes.getNode(node).hostedModels[0], modelId, "list not rewritten");
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.ModelNotHostable.selector, modelId));
        vm.prank(node);
        nodes.setHostedModels(_ids(modelId));
    }
}
