// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IModelRegistry} from "./interfaces/IModelRegistry.sol";

/// @title ModelRegistry
/// @notice The catalogue of models, by IPFS CID and sha256. Each version's facts are immutable
///         once proposed: a node that verified the bytes once never has to re-check them, and a
///         price change is a new version that clients see before they sign for it.
contract ModelRegistry is IModelRegistry, AccessControl {
    /// @notice Role allowed to approve and deprecate any model.
    bytes32 public constant CURATOR_ROLE = keccak256("CURATOR_ROLE");

    uint256 public constant MAX_NAME_BYTES = 64;
    uint256 public constant MAX_CID_BYTES = 128;
    uint256 public constant MAX_QUANTIZATION_BYTES = 32;
    uint256 public constant MAX_SPECIALTIES = 16;
    uint256 public constant MAX_SPECIALTY_BYTES = 32;

    mapping(uint256 modelId => Model) private _models;
    mapping(bytes32 nameHash => uint256[]) private _versions;
    mapping(bytes32 nameHash => address) public nameOwner;
    mapping(bytes32 cidHash => uint256) public modelIdByCid;
    /// @dev Versions of a name that are not deprecated, and whether any version was ever approved:
    ///      together they say when a squatted name can be released.
    mapping(bytes32 nameHash => uint256) private _liveVersions;
    mapping(bytes32 nameHash => bool) private _nameApproved;
    uint256 private _count;

    /// @param admin Receives the admin and curator roles.
    constructor(address admin) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(CURATOR_ROLE, admin);
    }

    /// @inheritdoc IModelRegistry
    function propose(ModelSpec calldata spec) external returns (uint256 modelId) {
        _validate(spec);
        bytes32 nameHash = keccak256(bytes(spec.name));
        address owner = nameOwner[nameHash];
        if (owner == address(0)) {
            nameOwner[nameHash] = msg.sender;
        } else if (owner != msg.sender && !hasRole(CURATOR_ROLE, msg.sender)) {
            revert NameOwnedByAnother(spec.name, owner);
        }
        bytes32 cidHash = keccak256(bytes(spec.cid));
        uint256 existing = modelIdByCid[cidHash];
        if (existing != 0) revert DuplicateCid(spec.cid, existing);

        modelId = ++_count;
        modelIdByCid[cidHash] = modelId;
        _versions[nameHash].push(modelId);
        _liveVersions[nameHash] += 1;
        uint32 version = uint32(_versions[nameHash].length);
        Model storage m = _models[modelId];
        m.name = spec.name;
        m.cid = spec.cid;
        m.sha256Digest = spec.sha256Digest;
        m.sizeBytes = spec.sizeBytes;
        m.quantization = spec.quantization;
        m.contextWindow = spec.contextWindow;
        m.pricePer1k = spec.pricePer1k;
        for (uint256 i; i < spec.specialties.length; ++i) {
            m.specialties.push(spec.specialties[i]);
        }
        m.publisher = msg.sender;
        m.status = Status.Proposed;
        m.version = version;
        m.proposedAt = uint64(block.timestamp);
        emit ModelProposed(modelId, spec.name, version, spec.cid, spec.sha256Digest, msg.sender);
    }

    /// @inheritdoc IModelRegistry
    function approve(uint256 modelId) external onlyRole(CURATOR_ROLE) {
        Model storage m = _existing(modelId);
        if (m.status != Status.Proposed) revert WrongModelStatus(modelId, m.status, Status.Proposed);
        m.status = Status.Approved;
        m.approvedAt = uint64(block.timestamp);
        _nameApproved[keccak256(bytes(m.name))] = true;
        emit ModelApproved(modelId, msg.sender);
    }

    /// @inheritdoc IModelRegistry
    function deprecate(uint256 modelId) external {
        Model storage m = _existing(modelId);
        if (msg.sender != m.publisher && !hasRole(CURATOR_ROLE, msg.sender)) {
            revert NotPublisherOrCurator(modelId, msg.sender);
        }
        if (m.status == Status.Deprecated) revert ModelAlreadyDeprecated(modelId);
        m.status = Status.Deprecated;
        emit ModelDeprecated(modelId, msg.sender);
        bytes32 nameHash = keccak256(bytes(m.name));
        _liveVersions[nameHash] -= 1;
        if (m.approvedAt != 0) return;
        // Never approved: a copy of someone else's pending proposal must not keep the CID or the
        // name from their real publisher once a curator (or the copier) deprecates it.
        delete modelIdByCid[keccak256(bytes(m.cid))];
        emit CidReleased(modelId, m.cid);
        if (_liveVersions[nameHash] == 0 && !_nameApproved[nameHash]) {
            emit NameReleased(m.name, nameOwner[nameHash]);
            delete nameOwner[nameHash];
        }
    }

    /// @inheritdoc IModelRegistry
    function getModel(uint256 modelId) external view returns (Model memory) {
        return _existing(modelId);
    }

    /// @inheritdoc IModelRegistry
    function isApproved(uint256 modelId) external view returns (bool) {
        return _models[modelId].status == Status.Approved;
    }

    /// @inheritdoc IModelRegistry
    function billablePrice(uint256 modelId) external view returns (uint256) {
        Model storage m = _models[modelId];
        return m.approvedAt == 0 ? 0 : m.pricePer1k;
    }

    /// @inheritdoc IModelRegistry
    function versionsOf(string calldata name) external view returns (uint256[] memory) {
        return _versions[keccak256(bytes(name))];
    }

    /// @inheritdoc IModelRegistry
    function modelCount() external view returns (uint256) {
        return _count;
    }

    function _existing(uint256 modelId) private view returns (Model storage m) {
        m = _models[modelId];
        if (m.status == Status.None) revert UnknownModel(modelId);
    }

    function _validate(ModelSpec calldata spec) private pure {
        _checkText(spec.name, MAX_NAME_BYTES, "name");
        _checkText(spec.cid, MAX_CID_BYTES, "cid");
        _checkText(spec.quantization, MAX_QUANTIZATION_BYTES, "quantization");
        if (spec.sha256Digest == bytes32(0)) revert InvalidModelSpec("sha256Digest");
        if (spec.sizeBytes == 0) revert InvalidModelSpec("sizeBytes");
        if (spec.contextWindow == 0) revert InvalidModelSpec("contextWindow");
        // A free model would settle zero-value receipts, which would make reputation free to farm.
        if (spec.pricePer1k == 0) revert InvalidModelSpec("pricePer1k");
        if (spec.specialties.length > MAX_SPECIALTIES) revert InvalidModelSpec("specialties");
        for (uint256 i; i < spec.specialties.length; ++i) {
            _checkText(spec.specialties[i], MAX_SPECIALTY_BYTES, "specialties");
        }
    }

    function _checkText(string calldata value, uint256 maxBytes, string memory field) private pure {
        uint256 length = bytes(value).length;
        if (length == 0 || length > maxBytes) revert InvalidModelSpec(field);
    }
}
