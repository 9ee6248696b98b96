// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Base} from "./utils/Base.sol";
import {ModelRegistry} from "../src/ModelRegistry.sol";
import {IModelRegistry} from "../src/interfaces/IModelRegistry.sol";
import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";

contract ModelRegistryTest is Base {
    string internal constant NAME = "qwen2.5-coder-1.5b";
    string internal constant CID = "bafkreiqwen";

    function _repeat(bytes1 c, uint256 n) internal pure returns (string memory) {
        bytes memory b = new bytes(n);
        for (uint256 i; i < n; ++i) {
            b[i] = c;
        }
        return string(b);
    }

    function _propose(address who, IModelRegistry.ModelSpec memory spec) internal returns (uint256 id) {
        vm.prank(who);
        id = models.propose(spec);
    }

    function _expectInvalid(string memory field, IModelRegistry.ModelSpec memory spec) internal {
        uint256 countBefore = models.modelCount();
        vm.expectRevert(abi.encodeWithSelector(IModelRegistry.InvalidModelSpec.selector, field));
        vm.prank(publisher);
        models.propose(spec);
        vm.assertEq(models.modelCount(), countBefore, "nothing stored");
    }

    // ------------------------------------------------------------------ constructor / roles

    function test_constructor_grantsAdminAndCurator() public view {
        vm.assertTrue(models.hasRole(models.DEFAULT_ADMIN_ROLE(), admin), "admin role");
        vm.assertTrue(models.hasRole(models.CURATOR_ROLE(), admin), "admin is curator");
        vm.assertTrue(models.hasRole(models.CURATOR_ROLE(), curator), "fixture curator");
        vm.assertFalse(models.hasRole(models.CURATOR_ROLE(), publisher), "publisher is not curator");
    }

    // ------------------------------------------------------------------ propose

    function test_propose_storesModel() public {
        vm.warp(1_700_000_123);
        IModelRegistry.ModelSpec memory spec = _spec(NAME, CID);
        uint256 id = _propose(publisher, spec);

        IModelRegistry.Model memory m = models.getModel(id);
        vm.assertEq(m.name, NAME, "name");
        vm.assertEq(m.cid, CID, "cid");
        vm.assertEq(m.sha256Digest, keccak256(bytes(CID)), "digest");
        vm.assertEq(uint256(m.sizeBytes), 253_000_000, "size");
        vm.assertEq(m.quantization, "Q4_K_M", "quantization");
        vm.assertEq(uint256(m.contextWindow), 32_768, "context");
        vm.assertEq(m.pricePer1k, PRICE_PER_1K, "price");
        vm.assertEq(m.specialties.length, 2, "specialty count");
        vm.assertEq(m.specialties[0], "python", "specialty 0");
        vm.assertEq(m.specialties[1], "debugging", "specialty 1");
        vm.assertEq(m.publisher, publisher, "publisher");
        vm.assertEq(uint256(m.status), uint256(IModelRegistry.Status.Proposed), "status");
        vm.assertEq(uint256(m.version), 1, "version");
        vm.assertEq(uint256(m.proposedAt), 1_700_000_123, "proposedAt");
        vm.assertFalse(models.isApproved(id), "not approved yet");
    }

    function test_propose_assignsSequentialIdsFromOne() public {
        vm.assertEq(modelId, 1, "fixture model is id 1");
        vm.assertEq(models.modelCount(), 1, "count 1");
        uint256 id2 = _propose(publisher, _spec(NAME, CID));
        uint256 id3 = _propose(stranger, _spec("other", "bafkreiother"));
        vm.assertEq(id2, 2, "id 2");
        vm.assertEq(id3, 3, "id 3");
        vm.assertEq(models.modelCount(), 3, "count 3");
    }

    function test_propose_recordsNameOwnerAndCid() public {
        uint256 id = _propose(stranger, _spec(NAME, CID));
        vm.assertEq(models.nameOwner(keccak256(bytes(NAME))), stranger, "name owner");
        vm.assertEq(models.modelIdByCid(keccak256(bytes(CID))), id, "cid index");
    }

    function test_propose_emitsModelProposed() public {
        vm.expectEmit(true, true, false, true, address(models));
        emit IModelRegistry.ModelProposed(2, NAME, 1, CID, keccak256(bytes(CID)), publisher);
        _propose(publisher, _spec(NAME, CID));
    }

    function test_propose_newCidUnderSameNameIsNextVersion() public {
        uint256 v2 = _propose(publisher, _spec("gemma-3-270m", "bafkreigemma-v2"));
        uint256 v3 = _propose(publisher, _spec("gemma-3-270m", "bafkreigemma-v3"));
        vm.assertEq(uint256(models.getModel(v2).version), 2, "v2");
        vm.assertEq(uint256(models.getModel(v3).version), 3, "v3");

        uint256[] memory ids = models.versionsOf("gemma-3-270m");
        vm.assertEq(ids.length, 3, "three versions");
        vm.assertEq(ids[0], modelId, "oldest first");
        vm.assertEq(ids[1], v2, "second");
        vm.assertEq(ids[2], v3, "newest last");
        // Earlier versions are untouched by a new version.
        vm.assertTrue(models.isApproved(modelId), "v1 still approved");
        vm.assertFalse(models.isApproved(v2), "v2 proposed only");
    }

    function test_propose_newVersionEmitsItsVersionNumber() public {
        vm.expectEmit(true, true, false, true, address(models));
        emit IModelRegistry.ModelProposed(
            2, "gemma-3-270m", 2, "bafkreigemma-v2", keccak256("bafkreigemma-v2"), publisher
        );
        _propose(publisher, _spec("gemma-3-270m", "bafkreigemma-v2"));
    }

    function test_propose_curatorCanAddVersionUnderAnothersName() public {
        uint256 id = _propose(curator, _spec("gemma-3-270m", "bafkreigemma-curated"));
        IModelRegistry.Model memory m = models.getModel(id);
        vm.assertEq(uint256(m.version), 2, "version 2");
        vm.assertEq(m.publisher, curator, "curator is the version's publisher");
        vm.assertEq(models.nameOwner(keccak256("gemma-3-270m")), publisher, "name stays with its owner");
        vm.assertEq(models.versionsOf("gemma-3-270m").length, 2, "listed under the name");
    }

    function test_propose_curatorClaimsAnUnusedName() public {
        _propose(curator, _spec(NAME, CID));
        vm.assertEq(models.nameOwner(keccak256(bytes(NAME))), curator, "curator owns a new name");
        vm.expectRevert(abi.encodeWithSelector(IModelRegistry.NameOwnedByAnother.selector, NAME, curator));
        vm.prank(publisher);
        models.propose(_spec(NAME, "bafkreiqwen-v2"));
    }

    function test_RevertWhen_NameOwnedByAnother() public {
        vm.expectRevert(abi.encodeWithSelector(IModelRegistry.NameOwnedByAnother.selector, "gemma-3-270m", publisher));
        vm.prank(stranger);
        models.propose(_spec("gemma-3-270m", "bafkreigemma-fake"));
        vm.assertEq(models.versionsOf("gemma-3-270m").length, 1, "no version added");
    }

    function test_RevertWhen_NameOwnedByAnother_evenAfterAllVersionsDeprecated() public {
        vm.prank(publisher);
        models.deprecate(modelId);
        vm.expectRevert(abi.encodeWithSelector(IModelRegistry.NameOwnedByAnother.selector, "gemma-3-270m", publisher));
        vm.prank(stranger);
        models.propose(_spec("gemma-3-270m", "bafkreigemma-fake"));
    }

    function test_RevertWhen_DuplicateCid() public {
        vm.expectRevert(abi.encodeWithSelector(IModelRegistry.DuplicateCid.selector, "bafkreigemma", modelId));
        vm.prank(stranger);
        models.propose(_spec("another-name", "bafkreigemma"));
    }

    function test_RevertWhen_DuplicateCid_sameNameSamePublisher() public {
        vm.expectRevert(abi.encodeWithSelector(IModelRegistry.DuplicateCid.selector, "bafkreigemma", modelId));
        vm.prank(publisher);
        models.propose(_spec("gemma-3-270m", "bafkreigemma"));
    }

    function test_RevertWhen_DuplicateCid_byCurator() public {
        vm.expectRevert(abi.encodeWithSelector(IModelRegistry.DuplicateCid.selector, "bafkreigemma", modelId));
        vm.prank(curator);
        models.propose(_spec("curated", "bafkreigemma"));
    }

    function test_RevertWhen_DuplicateCid_ofDeprecatedModel() public {
        vm.prank(curator);
        models.deprecate(modelId);
        vm.expectRevert(abi.encodeWithSelector(IModelRegistry.DuplicateCid.selector, "bafkreigemma", modelId));
        vm.prank(publisher);
        models.propose(_spec("gemma-3-270m", "bafkreigemma"));
    }

    // ------------------------------------------------------------------ InvalidModelSpec, field by field

    function test_RevertWhen_nameEmpty() public {
        _expectInvalid("name", _spec("", CID));
    }

    function test_RevertWhen_nameTooLong() public {
        _expectInvalid("name", _spec(_repeat("n", 65), CID));
    }

    function test_propose_acceptsNameAtMaxLength() public {
        uint256 id = _propose(publisher, _spec(_repeat("n", 64), CID));
        vm.assertEq(bytes(models.getModel(id).name).length, 64, "64-byte name stored");
    }

    function test_RevertWhen_cidEmpty() public {
        _expectInvalid("cid", _spec(NAME, ""));
    }

    function test_RevertWhen_cidTooLong() public {
        _expectInvalid("cid", _spec(NAME, _repeat("c", 129)));
    }

    function test_propose_acceptsCidAtMaxLength() public {
        uint256 id = _propose(publisher, _spec(NAME, _repeat("c", 128)));
        vm.assertEq(bytes(models.getModel(id).cid).length, 128, "128-byte cid stored");
    }

    function test_RevertWhen_quantizationEmpty() public {
        IModelRegistry.ModelSpec memory spec = _spec(NAME, CID);
        spec.quantization = "";
        _expectInvalid("quantization", spec);
    }

    function test_RevertWhen_quantizationTooLong() public {
        IModelRegistry.ModelSpec memory spec = _spec(NAME, CID);
        spec.quantization = _repeat("q", 33);
        _expectInvalid("quantization", spec);
    }

    function test_propose_acceptsQuantizationAtMaxLength() public {
        IModelRegistry.ModelSpec memory spec = _spec(NAME, CID);
        spec.quantization = _repeat("q", 32);
        uint256 id = _propose(publisher, spec);
        vm.assertEq(models.getModel(id).quantization, _repeat("q", 32), "stored");
    }

    function test_RevertWhen_sha256DigestZero() public {
        IModelRegistry.ModelSpec memory spec = _spec(NAME, CID);
        spec.sha256Digest = bytes32(0);
        _expectInvalid("sha256Digest", spec);
    }

    function test_RevertWhen_sizeBytesZero() public {
        IModelRegistry.ModelSpec memory spec = _spec(NAME, CID);
        spec.sizeBytes = 0;
        _expectInvalid("sizeBytes", spec);
    }

    function test_RevertWhen_contextWindowZero() public {
        IModelRegistry.ModelSpec memory spec = _spec(NAME, CID);
        spec.contextWindow = 0;
        _expectInvalid("contextWindow", spec);
    }

    function test_RevertWhen_pricePer1kZero() public {
        IModelRegistry.ModelSpec memory spec = _spec(NAME, CID);
        spec.pricePer1k = 0;
        _expectInvalid("pricePer1k", spec);
    }

    function test_RevertWhen_tooManySpecialties() public {
        IModelRegistry.ModelSpec memory spec = _spec(NAME, CID);
        spec.specialties = new string[](17);
        for (uint256 i; i < 17; ++i) {
            spec.specialties[i] = "s";
        }
        _expectInvalid("specialties", spec);
    }

    function test_propose_acceptsMaxSpecialties() public {
        IModelRegistry.ModelSpec memory spec = _spec(NAME, CID);
        spec.specialties = new string[](16);
        for (uint256 i; i < 16; ++i) {
            spec.specialties[i] = _repeat("s", 32);
        }
        uint256 id = _propose(publisher, spec);
        vm.assertEq(models.getModel(id).specialties.length, 16, "16 stored");
    }

    function test_propose_acceptsNoSpecialties() public {
        IModelRegistry.ModelSpec memory spec = _spec(NAME, CID);
        spec.specialties = new string[](0);
        uint256 id = _propose(publisher, spec);
        vm.assertEq(models.getModel(id).specialties.length, 0, "none stored");
    }

    function test_RevertWhen_specialtyEmpty() public {
        IModelRegistry.ModelSpec memory spec = _spec(NAME, CID);
        spec.specialties[1] = "";
        _expectInvalid("specialties", spec);
    }

    function test_RevertWhen_specialtyTooLong() public {
        IModelRegistry.ModelSpec memory spec = _spec(NAME, CID);
        spec.specialties[0] = _repeat("s", 33);
        _expectInvalid("specialties", spec);
    }

    function test_propose_validatesNameBeforeCid() public {
        // With several bad fields the first one in validation order is reported.
        IModelRegistry.ModelSpec memory spec = _spec("", "");
        spec.pricePer1k = 0;
        _expectInvalid("name", spec);
    }

    /// @dev One fuzzed length per text field: it is accepted iff 1 <= length <= the field's limit.
    function testFuzz_propose_textLengthLimits(uint256 fieldSeed, uint256 length) public {
        uint256 field = bound(fieldSeed, 0, 3);
        length = bound(length, 0, 300);
        IModelRegistry.ModelSpec memory spec = _spec(NAME, CID);
        string memory text = _repeat("x", length);
        string memory fieldName;
        uint256 maxBytes;
        if (field == 0) {
            spec.name = text;
            (fieldName, maxBytes) = ("name", models.MAX_NAME_BYTES());
        } else if (field == 1) {
            spec.cid = text;
            (fieldName, maxBytes) = ("cid", models.MAX_CID_BYTES());
        } else if (field == 2) {
            spec.quantization = text;
            (fieldName, maxBytes) = ("quantization", models.MAX_QUANTIZATION_BYTES());
        } else {
            spec.specialties[0] = text;
            (fieldName, maxBytes) = ("specialties", models.MAX_SPECIALTY_BYTES());
        }

        if (length == 0 || length > maxBytes) {
            _expectInvalid(fieldName, spec);
        } else {
            uint256 id = _propose(publisher, spec);
            vm.assertEq(id, 2, "stored as the next id");
            vm.assertEq(uint256(models.getModel(id).status), uint256(IModelRegistry.Status.Proposed), "proposed");
        }
    }

    function testFuzz_propose_specialtyCountLimit(uint256 count) public {
        count = bound(count, 0, 40);
        IModelRegistry.ModelSpec memory spec = _spec(NAME, CID);
        spec.specialties = new string[](count);
        for (uint256 i; i < count; ++i) {
            spec.specialties[i] = "tag";
        }
        if (count > models.MAX_SPECIALTIES()) {
            _expectInvalid("specialties", spec);
        } else {
            uint256 id = _propose(publisher, spec);
            vm.assertEq(models.getModel(id).specialties.length, count, "all stored");
        }
    }

    function testFuzz_propose_numericFieldsStoredVerbatim(uint64 size, uint32 context, uint256 price, bytes32 digest)
        public
    {
        size = uint64(bound(size, 1, type(uint64).max));
        context = uint32(bound(context, 1, type(uint32).max));
        price = bound(price, 1, type(uint256).max);
        if (digest == bytes32(0)) digest = bytes32(uint256(1));
        IModelRegistry.ModelSpec memory spec = _spec(NAME, CID);
        spec.sizeBytes = size;
        spec.contextWindow = context;
        spec.pricePer1k = price;
        spec.sha256Digest = digest;
        IModelRegistry.Model memory m = models.getModel(_propose(publisher, spec));
        vm.assertEq(uint256(m.sizeBytes), uint256(size), "size");
        vm.assertEq(uint256(m.contextWindow), uint256(context), "context");
        vm.assertEq(m.pricePer1k, price, "price");
        vm.assertEq(m.sha256Digest, digest, "digest");
    }

    // ------------------------------------------------------------------ approve

    function test_approve_makesModelApproved() public {
        uint256 id = _propose(publisher, _spec(NAME, CID));
        vm.prank(curator);
        models.approve(id);
        vm.assertTrue(models.isApproved(id), "approved");
        vm.assertEq(uint256(models.getModel(id).status), uint256(IModelRegistry.Status.Approved), "status");
    }

    function test_approve_emitsModelApproved() public {
        uint256 id = _propose(publisher, _spec(NAME, CID));
        vm.expectEmit(true, true, false, true, address(models));
        emit IModelRegistry.ModelApproved(id, curator);
        vm.prank(curator);
        models.approve(id);
    }

    function test_approve_byAdminWhoHoldsCuratorRole() public {
        uint256 id = _propose(publisher, _spec(NAME, CID));
        vm.prank(admin);
        models.approve(id);
        vm.assertTrue(models.isApproved(id), "admin approved");
    }

    function test_RevertWhen_approveByNonCurator() public {
        uint256 id = _propose(publisher, _spec(NAME, CID));
        bytes32 role = models.CURATOR_ROLE();
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, stranger, role)
        );
        vm.prank(stranger);
        models.approve(id);
        vm.assertFalse(models.isApproved(id), "still proposed");
    }

    function test_RevertWhen_publisherApprovesOwnModel() public {
        uint256 id = _propose(publisher, _spec(NAME, CID));
        bytes32 role = models.CURATOR_ROLE();
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, publisher, role)
        );
        vm.prank(publisher);
        models.approve(id);
    }

    function test_RevertWhen_approveAlreadyApproved() public {
        vm.expectRevert(
            abi.encodeWithSelector(
                IModelRegistry.WrongModelStatus.selector,
                modelId,
                IModelRegistry.Status.Approved,
                IModelRegistry.Status.Proposed
            )
        );
        vm.prank(curator);
        models.approve(modelId);
    }

    function test_RevertWhen_approveDeprecated() public {
        uint256 id = _propose(publisher, _spec(NAME, CID));
        vm.prank(publisher);
        models.deprecate(id);
        vm.expectRevert(
            abi.encodeWithSelector(
                IModelRegistry.WrongModelStatus.selector,
                id,
                IModelRegistry.Status.Deprecated,
                IModelRegistry.Status.Proposed
            )
        );
        vm.prank(curator);
        models.approve(id);
    }

    function test_RevertWhen_approveUnknownModel() public {
        vm.expectRevert(abi.encodeWithSelector(IModelRegistry.UnknownModel.selector, 99));
        vm.prank(curator);
        models.approve(99);
    }

    function test_RevertWhen_approveModelIdZero() public {
        vm.expectRevert(abi.encodeWithSelector(IModelRegistry.UnknownModel.selector, 0));
        vm.prank(curator);
        models.approve(0);
    }

    // ------------------------------------------------------------------ deprecate

    function test_deprecate_byPublisherOfProposedModel() public {
        uint256 id = _propose(publisher, _spec(NAME, CID));
        vm.prank(publisher);
        models.deprecate(id);
        vm.assertEq(uint256(models.getModel(id).status), uint256(IModelRegistry.Status.Deprecated), "deprecated");
    }

    function test_deprecate_byPublisherOfApprovedModel() public {
        vm.prank(publisher);
        models.deprecate(modelId);
        vm.assertFalse(models.isApproved(modelId), "no longer approved");
        vm.assertEq(uint256(models.getModel(modelId).status), uint256(IModelRegistry.Status.Deprecated), "deprecated");
    }

    function test_deprecate_byCurator() public {
        vm.prank(curator);
        models.deprecate(modelId);
        vm.assertFalse(models.isApproved(modelId), "no longer approved");
    }

    function test_deprecate_keepsFactsAndVersionList() public {
        vm.prank(curator);
        models.deprecate(modelId);
        IModelRegistry.Model memory m = models.getModel(modelId);
        vm.assertEq(m.cid, "bafkreigemma", "cid kept");
        vm.assertEq(m.publisher, publisher, "publisher kept");
        vm.assertEq(models.versionsOf("gemma-3-270m").length, 1, "still listed");
    }

    function test_deprecate_emitsModelDeprecated() public {
        vm.expectEmit(true, true, false, true, address(models));
        emit IModelRegistry.ModelDeprecated(modelId, curator);
        vm.prank(curator);
        models.deprecate(modelId);
    }

    function test_RevertWhen_NotPublisherOrCurator() public {
        vm.expectRevert(abi.encodeWithSelector(IModelRegistry.NotPublisherOrCurator.selector, modelId, stranger));
        vm.prank(stranger);
        models.deprecate(modelId);
        vm.assertTrue(models.isApproved(modelId), "still approved");
    }

    function test_RevertWhen_nameOwnerDeprecatesCuratorsVersion() public {
        // Deprecation is per version: the curator published v2, so the name owner may not retire it.
        uint256 v2 = _propose(curator, _spec("gemma-3-270m", "bafkreigemma-v2"));
        vm.expectRevert(abi.encodeWithSelector(IModelRegistry.NotPublisherOrCurator.selector, v2, publisher));
        vm.prank(publisher);
        models.deprecate(v2);
    }

    function test_RevertWhen_deprecateTwice() public {
        vm.prank(curator);
        models.deprecate(modelId);
        vm.expectRevert(abi.encodeWithSelector(IModelRegistry.ModelAlreadyDeprecated.selector, modelId));
        vm.prank(curator);
        models.deprecate(modelId);
        vm.assertEq(
            uint256(models.getModel(modelId).status), uint256(IModelRegistry.Status.Deprecated), "still deprecated"
        );
    }

    function test_RevertWhen_deprecateTwice_byPublisherOfProposedModel() public {
        uint256 id = _propose(publisher, _spec(NAME, CID));
        vm.prank(publisher);
        models.deprecate(id);
        vm.expectRevert(abi.encodeWithSelector(IModelRegistry.ModelAlreadyDeprecated.selector, id));
        vm.prank(publisher);
        models.deprecate(id);
    }

    function test_RevertWhen_strangerDeprecatesDeprecatedModel_authCheckedFirst() public {
        // Authorization is checked before status: a stranger gets NotPublisherOrCurator even for a
        // model that is already deprecated.
        vm.prank(curator);
        models.deprecate(modelId);
        vm.expectRevert(abi.encodeWithSelector(IModelRegistry.NotPublisherOrCurator.selector, modelId, stranger));
        vm.prank(stranger);
        models.deprecate(modelId);
    }

    function test_RevertWhen_deprecateUnknownModel() public {
        vm.expectRevert(abi.encodeWithSelector(IModelRegistry.UnknownModel.selector, 42));
        vm.prank(curator);
        models.deprecate(42);
    }

    // ------------------------------------------------------------------ views

    function test_RevertWhen_getModelUnknown() public {
        vm.expectRevert(abi.encodeWithSelector(IModelRegistry.UnknownModel.selector, 2));
        models.getModel(2);
    }

    function test_isApproved_falseForUnknownProposedAndDeprecated() public {
        vm.assertFalse(models.isApproved(0), "id 0");
        vm.assertFalse(models.isApproved(12345), "unknown");
        uint256 id = _propose(publisher, _spec(NAME, CID));
        vm.assertFalse(models.isApproved(id), "proposed");
        vm.assertTrue(models.isApproved(modelId), "approved");
        vm.prank(publisher);
        models.deprecate(modelId);
        vm.assertFalse(models.isApproved(modelId), "deprecated");
    }

    function test_versionsOf_emptyForUnknownName() public view {
        vm.assertEq(models.versionsOf("no-such-model").length, 0, "empty");
    }

    function test_versionsOf_isCaseSensitive() public {
        // Names are hashed byte for byte: a different spelling is a different name with its own owner.
        uint256 id = _propose(stranger, _spec("Gemma-3-270m", "bafkreiGemma"));
        vm.assertEq(models.versionsOf("Gemma-3-270m")[0], id, "own list");
        vm.assertEq(uint256(models.getModel(id).version), 1, "version 1");
        vm.assertEq(models.versionsOf("gemma-3-270m").length, 1, "original untouched");
    }

    function test_modelCount_countsEveryVersion() public {
        _propose(publisher, _spec("gemma-3-270m", "bafkreigemma-v2"));
        _propose(stranger, _spec(NAME, CID));
        vm.prank(curator);
        models.deprecate(modelId);
        vm.assertEq(models.modelCount(), 3, "deprecation does not uncount");
    }

    function testFuzz_versions_countUpPerName(uint256 n) public {
        n = bound(n, 1, 12);
        for (uint256 i; i < n; ++i) {
            string memory cid = string(abi.encodePacked("bafkreifuzz-", vm.toString(i)));
            uint256 id = _propose(i % 2 == 0 ? publisher : curator, _spec("gemma-3-270m", cid));
            vm.assertEq(uint256(models.getModel(id).version), i + 2, "version = position in list");
        }
        uint256[] memory ids = models.versionsOf("gemma-3-270m");
        vm.assertEq(ids.length, n + 1, "all listed");
        for (uint256 i = 1; i < ids.length; ++i) {
            vm.assertGt(ids[i], ids[i - 1], "ascending");
        }
        vm.assertEq(models.modelCount(), n + 1, "count");
    }
}
