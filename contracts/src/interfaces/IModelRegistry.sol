// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

/// @title IModelRegistry
/// @notice Which models exist on llm-mesh, where their bytes live (IPFS CID + sha256) and what they
///         cost. Publishers propose, curators approve ("only verified models join the network").
interface IModelRegistry {
    /// @notice Lifecycle of one model version.
    enum Status {
        None,
        Proposed,
        Approved,
        Deprecated
    }

    /// @notice What a publisher proposes. A new CID under an existing name is a new version.
    struct ModelSpec {
        string name;
        string cid;
        bytes32 sha256Digest;
        uint64 sizeBytes;
        string quantization;
        uint32 contextWindow;
        uint256 pricePer1k;
        string[] specialties;
    }

    /// @notice One registered model version.
    struct Model {
        string name;
        string cid;
        bytes32 sha256Digest;
        uint64 sizeBytes;
        string quantization;
        uint32 contextWindow;
        uint256 pricePer1k;
        string[] specialties;
        address publisher;
        Status status;
        uint32 version;
        uint64 proposedAt;
        uint64 approvedAt;
    }

    /// @notice A field of the spec is empty, too long or zero; `field` names it.
    error InvalidModelSpec(string field);
    /// @notice The CID is already registered as model `existingId`.
    error DuplicateCid(string cid, uint256 existingId);
    /// @notice The name belongs to another publisher; only they (or a curator) add versions.
    error NameOwnedByAnother(string name, address owner);
    /// @notice No model has this id.
    error UnknownModel(uint256 modelId);
    /// @notice The model is not in the status the action needs.
    error WrongModelStatus(uint256 modelId, Status current, Status expected);
    /// @notice The model is already deprecated.
    error ModelAlreadyDeprecated(uint256 modelId);
    /// @notice Only the publisher or a curator may deprecate a model.
    error NotPublisherOrCurator(uint256 modelId, address caller);

    /// @notice A model version was proposed.
    event ModelProposed(
        uint256 indexed modelId,
        string name,
        uint32 version,
        string cid,
        bytes32 sha256Digest,
        address indexed publisher
    );
    /// @notice A curator approved a model version; nodes may now host it.
    event ModelApproved(uint256 indexed modelId, address indexed curator);
    /// @notice A model version was deprecated; nodes should stop hosting it.
    event ModelDeprecated(uint256 indexed modelId, address indexed by);
    /// @notice A CID whose entry was deprecated without ever being approved is free to propose again.
    event CidReleased(uint256 indexed modelId, string cid);
    /// @notice A name with no live and no ever-approved version is free to claim again.
    event NameReleased(string name, address indexed previousOwner);

    /// @notice Proposes a model version.
    /// @param spec The model's storage, size and price facts.
    /// @return modelId The new model's id (ids start at 1).
    function propose(ModelSpec calldata spec) external returns (uint256 modelId);

    /// @notice Approves a proposed model (curator role).
    /// @param modelId The model to approve.
    function approve(uint256 modelId) external;

    /// @notice Deprecates a proposed or approved model (publisher or curator). Deprecating an entry
    ///         that was never approved releases its CID, and its name once no version of the name
    ///         is live and none was ever approved, so a squatted proposal cannot hold them forever.
    /// @param modelId The model to deprecate.
    function deprecate(uint256 modelId) external;

    /// @notice Reads one model version.
    /// @param modelId The model id.
    /// @return The model; reverts with UnknownModel for an id never proposed.
    function getModel(uint256 modelId) external view returns (Model memory);

    /// @notice Whether nodes may host and bill for the model.
    /// @param modelId The model id.
    /// @return True when the model is approved.
    function isApproved(uint256 modelId) external view returns (bool);

    /// @notice The price receipts for this model are billed and counted at: its price per 1K tokens
    ///         once a curator approved it (also after deprecation, for work done before), else 0.
    /// @param modelId The model id.
    /// @return The price per 1K tokens, or 0 when the model was never approved.
    function billablePrice(uint256 modelId) external view returns (uint256);

    /// @notice All version ids of a model name, oldest first.
    /// @param name The model name.
    /// @return The ids.
    function versionsOf(string calldata name) external view returns (uint256[] memory);

    /// @notice The number of model versions ever proposed (the highest id).
    /// @return The count.
    function modelCount() external view returns (uint256);
}
