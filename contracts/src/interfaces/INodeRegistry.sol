// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {IModelRegistry} from "./IModelRegistry.sol";

/// @title INodeRegistry
/// @notice Node operators' stakes, endpoints, hosted models and reputation. An operator's address
///         is the node's identity: it stakes, signs usage receipts and receives the node's earnings.
interface INodeRegistry {
    /// @notice A node's registration and stake.
    struct Node {
        string nodeId;
        string endpoint;
        string hardware;
        uint256[] hostedModels;
        uint256 stake;
        uint256 unbonding;
        uint64 unbondingReadyAt;
        uint64 registeredAt;
        bool registered;
        uint64 deregisteredAt;
    }

    /// @notice Counters that only grow through settled payments (and slashing). Settlement credits
    ///         at most the tokens a payment pays for at the model's approved price, and counts a
    ///         receipt (and refreshes lastSettledAt) only when it pays for at least 1K tokens.
    struct Reputation {
        uint128 tokensServed;
        uint128 volumePaid;
        uint64 receiptsSettled;
        uint64 lastSettledAt;
        uint32 slashCount;
        uint128 totalSlashed;
    }

    /// @notice The amount must be greater than zero.
    error ZeroAmount();
    /// @notice The operator's stake is below the minimum needed to register.
    error StakeBelowMinimum(uint256 stake, uint256 minimum);
    /// @notice The operator asked to unbond or slash more than is staked.
    error InsufficientStake(uint256 requested, uint256 available);
    /// @notice The operator is already registered.
    error AlreadyRegistered(address operator);
    /// @notice The operator is not registered.
    error NotRegistered(address operator);
    /// @notice The node id is empty or too long, or the endpoint or hardware text is invalid.
    error InvalidNodeField(string field);
    /// @notice The node id belongs to another operator.
    error NodeIdTaken(string nodeId, address owner);
    /// @notice A hosted model is not approved in the ModelRegistry, or listed twice.
    error ModelNotHostable(uint256 modelId);
    /// @notice Too many hosted models.
    error TooManyModels(uint256 count, uint256 maximum);
    /// @notice Nothing is unbonding.
    error NothingUnbonding(address operator);
    /// @notice The unbonding period has not ended yet.
    error UnbondingNotReady(uint256 readyAt, uint256 nowTimestamp);
    /// @notice A parameter is outside its allowed range.
    error ParameterOutOfBounds(string name, uint256 value, uint256 minimum, uint256 maximum);
    /// @notice The address must not be zero.
    error ZeroAddress();

    /// @notice Tokens were added to an operator's stake.
    event StakeAdded(address indexed operator, uint256 amount, uint256 totalStake);
    /// @notice An operator registered a node.
    event NodeRegistered(address indexed operator, string nodeId, string endpoint, string hardware, uint256[] modelIds);
    /// @notice An operator changed its endpoint.
    event EndpointUpdated(address indexed operator, string endpoint);
    /// @notice An operator changed its hardware profile.
    event HardwareUpdated(address indexed operator, string hardware);
    /// @notice An operator changed the models it hosts.
    event HostedModelsUpdated(address indexed operator, uint256[] modelIds);
    /// @notice An operator left the network (its stake stays until unbonded).
    event NodeDeregistered(address indexed operator);
    /// @notice Stake moved into unbonding; it can be withdrawn from `readyAt`.
    event UnbondRequested(address indexed operator, uint256 amount, uint256 totalUnbonding, uint64 readyAt);
    /// @notice Unbonding stake moved back into the active stake.
    event UnbondCancelled(address indexed operator, uint256 amount);
    /// @notice Unbonded stake left the contract.
    event StakeWithdrawn(address indexed operator, uint256 amount);
    /// @notice A slasher took stake from an operator (active stake first, then unbonding).
    event NodeSlashed(
        address indexed operator, address indexed slasher, uint256 fromStake, uint256 fromUnbonding, string reason
    );
    /// @notice Settlement credited a node's reputation.
    event SettlementRecorded(address indexed operator, uint256 tokens, uint256 amount, uint256 receipts);
    /// @notice The minimum stake changed.
    event MinStakeChanged(uint256 oldValue, uint256 newValue);
    /// @notice The unbonding period changed.
    event UnbondingPeriodChanged(uint256 oldValue, uint256 newValue);

    /// @notice Adds to the caller's stake (needs an ERC-20 allowance).
    /// @param amount Tokens to stake.
    function stake(uint256 amount) external;

    /// @notice Registers the caller's node.
    /// @param nodeId A unique human-readable name.
    /// @param endpoint The node's public HTTP base URL.
    /// @param hardware A short hardware profile (for example JSON).
    /// @param modelIds Approved models the node hosts.
    function register(
        string calldata nodeId,
        string calldata endpoint,
        string calldata hardware,
        uint256[] calldata modelIds
    ) external;

    /// @notice Changes the caller's endpoint.
    /// @param endpoint The new endpoint URL.
    function updateEndpoint(string calldata endpoint) external;

    /// @notice Changes the caller's hardware profile.
    /// @param hardware The new profile.
    function updateHardware(string calldata hardware) external;

    /// @notice Replaces the list of models the caller hosts.
    /// @param modelIds Approved model ids, no duplicates.
    function setHostedModels(uint256[] calldata modelIds) external;

    /// @notice Leaves the network; the stake stays until unbonded.
    function deregister() external;

    /// @notice Moves stake into unbonding and restarts the caller's unbonding period; a request never
    ///         brings an earlier ready time closer, even after the period was lowered.
    /// @param amount Tokens to unbond.
    function requestUnbond(uint256 amount) external;

    /// @notice Moves all of the caller's unbonding stake back into the active stake.
    function cancelUnbond() external;

    /// @notice Withdraws the caller's unbonded stake after the unbonding period.
    function withdrawStake() external;

    /// @notice Takes stake from an operator (slasher role), active stake first, then unbonding
    ///         stake; takes what is there up to `amount`, so withdrawing first cannot dodge it.
    ///         The slash is recorded in the reputation even when nothing is left to take.
    /// @param operator The node to slash.
    /// @param amount The most to take.
    /// @param reason Why, for the record.
    /// @return taken What was taken.
    function slash(address operator, uint256 amount, string calldata reason) external returns (uint256 taken);

    /// @notice Credits a node's reputation for a settled payment (settlement role only).
    /// @param operator The node.
    /// @param tokens Tokens served.
    /// @param amount Amount paid.
    /// @param receipts Receipts settled.
    function recordSettlement(address operator, uint256 tokens, uint256 amount, uint256 receipts) external;

    /// @notice A node's registration and stake.
    /// @param operator The node.
    /// @return The node record.
    function getNode(address operator) external view returns (Node memory);

    /// @notice A node's reputation counters.
    /// @param operator The node.
    /// @return The counters.
    function reputationOf(address operator) external view returns (Reputation memory);

    /// @notice Whether the node is registered with at least the minimum stake.
    /// @param operator The node.
    /// @return True when routers may send it traffic.
    function isActive(address operator) external view returns (bool);

    /// @notice What settlement may still pay and credit a node. A node is payable while it is
    ///         registered, and for one unbonding period after it deregistered (receipts for work
    ///         done before it left), and only while it has stake to slash (active or unbonding).
    /// @param operator The node.
    /// @return payable_ Whether receipts for this node may be paid.
    /// @return tokensRoom How many more tokens tokensServed can count.
    /// @return volumeRoom How much more volumePaid can count.
    function settlementCapacity(address operator)
        external
        view
        returns (bool payable_, uint256 tokensRoom, uint256 volumeRoom);

    /// @notice The number of operators that ever registered.
    /// @return The count.
    function operatorCount() external view returns (uint256);

    /// @notice Operators that ever registered, in order of first registration, one page at a time.
    /// @param start Index of the first operator to return.
    /// @param limit The most to return.
    /// @return page Up to `limit` operators from `start` (empty past the end).
    function operatorsPage(uint256 start, uint256 limit) external view returns (address[] memory page);

    /// @notice The model registry hosted models are checked against.
    /// @return The registry.
    function models() external view returns (IModelRegistry);

    /// @notice Where slashed stake goes: the HYSA vault, fixed at deployment.
    /// @return The vault.
    function slashRecipient() external view returns (address);
}
