// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {INodeRegistry} from "./interfaces/INodeRegistry.sol";
import {IModelRegistry} from "./interfaces/IModelRegistry.sol";
import {IHysaVault} from "./interfaces/IHysaVault.sol";

/// @title NodeRegistry
/// @notice Stakes, registrations and reputation of the nodes that serve llm-mesh models.
/// @dev Reputation grows only through Settlement, where 70% of every payment goes to others (the
///      vault's 20% vests over a week, so it cannot be taken back by a sandwich), so a node buying
///      itself a reputation loses 70% of what it spends.
contract NodeRegistry is INodeRegistry, AccessControl, ReentrancyGuard {
    using SafeERC20 for IERC20;
    using SafeCast for uint256;

    /// @notice Role allowed to slash stake.
    bytes32 public constant SLASHER_ROLE = keccak256("SLASHER_ROLE");
    /// @notice Role of the Settlement contract, the only writer of reputation counters.
    bytes32 public constant SETTLEMENT_ROLE = keccak256("SETTLEMENT_ROLE");

    uint256 public constant MIN_UNBONDING_PERIOD = 1 hours;
    uint256 public constant MAX_UNBONDING_PERIOD = 90 days;
    uint256 public constant MAX_MIN_STAKE = 10_000_000 ether;
    uint256 public constant MAX_HOSTED_MODELS = 32;
    uint256 public constant MAX_NODE_ID_BYTES = 64;
    uint256 public constant MAX_ENDPOINT_BYTES = 256;
    uint256 public constant MAX_HARDWARE_BYTES = 1024;

    IERC20 public immutable token;
    IModelRegistry public immutable models;
    /// @notice The HYSA vault; fixed, so no admin can redirect slashed stake.
    address public immutable slashRecipient;

    uint256 public minStake;
    uint256 public unbondingPeriod;

    mapping(address operator => Node) private _nodes;
    mapping(address operator => Reputation) private _reputation;
    mapping(bytes32 nodeIdHash => address) public nodeIdOwner;
    address[] private _operators;

    /// @param token_ The staking token.
    /// @param models_ The model registry hosted models are checked against.
    /// @param admin Receives the admin and slasher roles.
    /// @param slashRecipient_ The HYSA vault: where slashed stake goes, for good.
    /// @param minStake_ Minimum stake to register.
    /// @param unbondingPeriod_ Seconds between an unbond request and the withdrawal.
    constructor(
        IERC20 token_,
        IModelRegistry models_,
        address admin,
        address slashRecipient_,
        uint256 minStake_,
        uint256 unbondingPeriod_
    ) {
        token = token_;
        models = models_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(SLASHER_ROLE, admin);
        if (slashRecipient_ == address(0)) revert ZeroAddress();
        slashRecipient = slashRecipient_;
        _setMinStake(minStake_);
        _setUnbondingPeriod(unbondingPeriod_);
    }

    /// @inheritdoc INodeRegistry
    function stake(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        Node storage node = _nodes[msg.sender];
        node.stake += amount;
        emit StakeAdded(msg.sender, amount, node.stake);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @inheritdoc INodeRegistry
    function register(
        string calldata nodeId,
        string calldata endpoint,
        string calldata hardware,
        uint256[] calldata modelIds
    ) external {
        Node storage node = _nodes[msg.sender];
        if (node.registered) revert AlreadyRegistered(msg.sender);
        if (node.stake < minStake) revert StakeBelowMinimum(node.stake, minStake);
        _checkText(nodeId, MAX_NODE_ID_BYTES, "nodeId");
        _checkText(endpoint, MAX_ENDPOINT_BYTES, "endpoint");
        _checkText(hardware, MAX_HARDWARE_BYTES, "hardware");
        _claimNodeId(node, nodeId);
        _checkHostable(modelIds);

        if (node.registeredAt == 0) _operators.push(msg.sender);
        node.nodeId = nodeId;
        node.endpoint = endpoint;
        node.hardware = hardware;
        node.hostedModels = modelIds;
        node.registered = true;
        node.registeredAt = uint64(block.timestamp);
        node.deregisteredAt = 0;
        emit NodeRegistered(msg.sender, nodeId, endpoint, hardware, modelIds);
    }

    /// @inheritdoc INodeRegistry
    function updateEndpoint(string calldata endpoint) external {
        Node storage node = _registered(msg.sender);
        _checkText(endpoint, MAX_ENDPOINT_BYTES, "endpoint");
        node.endpoint = endpoint;
        emit EndpointUpdated(msg.sender, endpoint);
    }

    /// @inheritdoc INodeRegistry
    function updateHardware(string calldata hardware) external {
        Node storage node = _registered(msg.sender);
        _checkText(hardware, MAX_HARDWARE_BYTES, "hardware");
        node.hardware = hardware;
        emit HardwareUpdated(msg.sender, hardware);
    }

    /// @inheritdoc INodeRegistry
    function setHostedModels(uint256[] calldata modelIds) external {
        Node storage node = _registered(msg.sender);
        _checkHostable(modelIds);
        node.hostedModels = modelIds;
        emit HostedModelsUpdated(msg.sender, modelIds);
    }

    /// @inheritdoc INodeRegistry
    function deregister() external {
        Node storage node = _registered(msg.sender);
        node.registered = false;
        node.deregisteredAt = uint64(block.timestamp);
        emit NodeDeregistered(msg.sender);
    }

    /// @inheritdoc INodeRegistry
    function requestUnbond(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        Node storage node = _nodes[msg.sender];
        if (amount > node.stake) revert InsufficientStake(amount, node.stake);
        node.stake -= amount;
        node.unbonding += amount;
        // The period restarts on every request, so stake never leaves sooner than one full period
        // after it stopped backing the node; and a request never brings an earlier ready time
        // closer (after the admin lowered the period, stake committed under the longer one
        // must not leave early and escape slashing).
        uint256 readyAt = block.timestamp + unbondingPeriod;
        if (readyAt > node.unbondingReadyAt) node.unbondingReadyAt = readyAt.toUint64();
        emit UnbondRequested(msg.sender, amount, node.unbonding, node.unbondingReadyAt);
    }

    /// @inheritdoc INodeRegistry
    function cancelUnbond() external {
        Node storage node = _nodes[msg.sender];
        uint256 amount = node.unbonding;
        if (amount == 0) revert NothingUnbonding(msg.sender);
        node.unbonding = 0;
        node.unbondingReadyAt = 0;
        node.stake += amount;
        emit UnbondCancelled(msg.sender, amount);
    }

    /// @inheritdoc INodeRegistry
    function withdrawStake() external nonReentrant {
        Node storage node = _nodes[msg.sender];
        uint256 amount = node.unbonding;
        if (amount == 0) revert NothingUnbonding(msg.sender);
        if (block.timestamp < node.unbondingReadyAt) revert UnbondingNotReady(node.unbondingReadyAt, block.timestamp);
        node.unbonding = 0;
        node.unbondingReadyAt = 0;
        emit StakeWithdrawn(msg.sender, amount);
        token.safeTransfer(msg.sender, amount);
    }

    /// @inheritdoc INodeRegistry
    function slash(address operator, uint256 amount, string calldata reason)
        external
        onlyRole(SLASHER_ROLE)
        nonReentrant
        returns (uint256 taken)
    {
        if (amount == 0) revert ZeroAmount();
        Node storage node = _nodes[operator];
        // What is there, up to the amount: an operator who front-runs a slash by withdrawing
        // matured unbonding stake still loses everything that remains.
        uint256 fromStake = Math.min(amount, node.stake);
        uint256 fromUnbonding = Math.min(amount - fromStake, node.unbonding);
        taken = fromStake + fromUnbonding;
        node.stake -= fromStake;
        node.unbonding -= fromUnbonding;
        Reputation storage rep = _reputation[operator];
        rep.slashCount += 1;
        rep.totalSlashed += taken.toUint128();
        emit NodeSlashed(operator, msg.sender, fromStake, fromUnbonding, reason);
        if (taken != 0) {
            token.safeTransfer(slashRecipient, taken);
            IHysaVault(slashRecipient).sync();
        }
    }

    /// @inheritdoc INodeRegistry
    function recordSettlement(address operator, uint256 tokens, uint256 amount, uint256 receipts)
        external
        onlyRole(SETTLEMENT_ROLE)
    {
        Reputation storage rep = _reputation[operator];
        rep.tokensServed += tokens.toUint128();
        rep.volumePaid += amount.toUint128();
        // Only receipts that paid for at least 1K tokens count and refresh the recency, so neither
        // can be bought with dust.
        if (receipts != 0) {
            rep.receiptsSettled += receipts.toUint64();
            rep.lastSettledAt = uint64(block.timestamp);
        }
        emit SettlementRecorded(operator, tokens, amount, receipts);
    }

    /// @notice Sets the minimum stake to register (admin).
    /// @param value The new minimum, in token base units.
    function setMinStake(uint256 value) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setMinStake(value);
    }

    /// @notice Sets the unbonding period (admin); requests already made keep their ready time.
    /// @param value Seconds.
    function setUnbondingPeriod(uint256 value) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setUnbondingPeriod(value);
    }

    /// @inheritdoc INodeRegistry
    function getNode(address operator) external view returns (Node memory) {
        return _nodes[operator];
    }

    /// @inheritdoc INodeRegistry
    function reputationOf(address operator) external view returns (Reputation memory) {
        return _reputation[operator];
    }

    /// @inheritdoc INodeRegistry
    function isActive(address operator) external view returns (bool) {
        Node storage node = _nodes[operator];
        return node.registered && node.stake >= minStake;
    }

    /// @inheritdoc INodeRegistry
    function settlementCapacity(address operator)
        external
        view
        returns (bool payable_, uint256 tokensRoom, uint256 volumeRoom)
    {
        Node storage node = _nodes[operator];
        bool serving =
            node.registered || (node.deregisteredAt != 0 && block.timestamp <= node.deregisteredAt + unbondingPeriod);
        payable_ = serving && node.stake + node.unbonding != 0;
        Reputation storage rep = _reputation[operator];
        tokensRoom = type(uint128).max - rep.tokensServed;
        volumeRoom = type(uint128).max - rep.volumePaid;
    }

    /// @inheritdoc INodeRegistry
    function operatorCount() external view returns (uint256) {
        return _operators.length;
    }

    /// @inheritdoc INodeRegistry
    function operatorsPage(uint256 start, uint256 limit) external view returns (address[] memory page) {
        uint256 count = _operators.length;
        page = new address[](start < count ? Math.min(limit, count - start) : 0);
        for (uint256 i; i < page.length; ++i) {
            page[i] = _operators[start + i];
        }
    }

    function _registered(address operator) private view returns (Node storage node) {
        node = _nodes[operator];
        if (!node.registered) revert NotRegistered(operator);
    }

    /// @dev A returning operator that picks a new id gives its old one back, so ids are not hoarded.
    function _claimNodeId(Node storage node, string calldata nodeId) private {
        bytes32 idHash = keccak256(bytes(nodeId));
        address owner = nodeIdOwner[idHash];
        if (owner != address(0) && owner != msg.sender) revert NodeIdTaken(nodeId, owner);
        bytes32 oldHash = keccak256(bytes(node.nodeId));
        if (node.registeredAt != 0 && oldHash != idHash) delete nodeIdOwner[oldHash];
        nodeIdOwner[idHash] = msg.sender;
    }

    function _checkHostable(uint256[] calldata modelIds) private view {
        if (modelIds.length > MAX_HOSTED_MODELS) revert TooManyModels(modelIds.length, MAX_HOSTED_MODELS);
        for (uint256 i; i < modelIds.length; ++i) {
            if (!models.isApproved(modelIds[i])) revert ModelNotHostable(modelIds[i]);
            for (uint256 j; j < i; ++j) {
                if (modelIds[j] == modelIds[i]) revert ModelNotHostable(modelIds[i]);
            }
        }
    }

    function _checkText(string calldata value, uint256 maxBytes, string memory field) private pure {
        uint256 length = bytes(value).length;
        if (length == 0 || length > maxBytes) revert InvalidNodeField(field);
    }

    function _setMinStake(uint256 value) private {
        if (value == 0 || value > MAX_MIN_STAKE) revert ParameterOutOfBounds("minStake", value, 1, MAX_MIN_STAKE);
        emit MinStakeChanged(minStake, value);
        minStake = value;
    }

    function _setUnbondingPeriod(uint256 value) private {
        if (value < MIN_UNBONDING_PERIOD || value > MAX_UNBONDING_PERIOD) {
            revert ParameterOutOfBounds("unbondingPeriod", value, MIN_UNBONDING_PERIOD, MAX_UNBONDING_PERIOD);
        }
        emit UnbondingPeriodChanged(unbondingPeriod, value);
        unbondingPeriod = value;
    }
}
