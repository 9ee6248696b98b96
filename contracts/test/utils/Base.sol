// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Vm} from "./Vm.sol";
import {NetworkToken} from "../../src/NetworkToken.sol";
import {ModelRegistry} from "../../src/ModelRegistry.sol";
import {NodeRegistry} from "../../src/NodeRegistry.sol";
import {Settlement} from "../../src/Settlement.sol";
import {HysaVault} from "../../src/HysaVault.sol";
import {IModelRegistry} from "../../src/interfaces/IModelRegistry.sol";
import {ISettlement} from "../../src/interfaces/ISettlement.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @notice Shared fixture: the whole marketplace deployed and wired as in production, with actors
///         that have private keys so tests can sign receipts.
abstract contract Base {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    uint256 internal constant MIN_STAKE = 1000 ether;
    uint256 internal constant UNBONDING_PERIOD = 7 days;
    uint256 internal constant UNLOCK_DELAY = 1 days;
    uint256 internal constant PRICE_PER_1K = 2 ether;
    uint256 internal constant NODE_PK = 0xA11CE;
    uint256 internal constant NODE2_PK = 0xB0B;
    uint256 internal constant PAYER_PK = 0xCAFE;
    uint256 internal constant PAYER2_PK = 0xD00D;

    address internal admin = address(0xAD);
    address internal curator = address(0xC0);
    address internal slasher = address(0x51);
    address internal developers = address(0xDE);
    address internal infrastructure = address(0x1F);
    address internal research = address(0x4D);
    address internal publisher = address(0x9B);
    address internal stranger = address(0x57);

    address internal node;
    address internal node2;
    address internal payer;
    address internal payer2;

    NetworkToken internal token;
    ModelRegistry internal models;
    NodeRegistry internal nodes;
    Settlement internal settlement;
    HysaVault internal vault;
    uint256 internal modelId;

    function setUp() public virtual {
        vm.warp(1_700_000_000);
        node = vm.addr(NODE_PK);
        node2 = vm.addr(NODE2_PK);
        payer = vm.addr(PAYER_PK);
        payer2 = vm.addr(PAYER2_PK);
        _deploy(new NetworkTokenFactory().make(admin));
        modelId = _approvedModel("gemma-3-270m", "bafkreigemma");
    }

    /// @dev Deploys registries, vault and settlement around `token_` and wires the roles.
    function _deploy(NetworkToken token_) internal {
        token = token_;
        vm.startPrank(admin);
        models = new ModelRegistry(admin);
        models.grantRole(models.CURATOR_ROLE(), curator);
        vault = new HysaVault(IERC20(address(token)));
        nodes = new NodeRegistry(IERC20(address(token)), models, admin, address(vault), MIN_STAKE, UNBONDING_PERIOD);
        settlement = new Settlement(
            IERC20(address(token)),
            nodes,
            admin,
            ISettlement.Treasury({developers: developers, infrastructure: infrastructure, research: research}),
            UNLOCK_DELAY
        );
        nodes.grantRole(nodes.SETTLEMENT_ROLE(), address(settlement));
        nodes.grantRole(nodes.SLASHER_ROLE(), slasher);
        vm.stopPrank();
    }

    function _spec(string memory name, string memory cid) internal pure returns (IModelRegistry.ModelSpec memory spec) {
        string[] memory specialties = new string[](2);
        specialties[0] = "python";
        specialties[1] = "debugging";
        spec = IModelRegistry.ModelSpec({
            name: name,
            cid: cid,
            sha256Digest: keccak256(bytes(cid)),
            sizeBytes: 253_000_000,
            quantization: "Q4_K_M",
            contextWindow: 32_768,
            pricePer1k: PRICE_PER_1K,
            specialties: specialties
        });
    }

    function _approvedModel(string memory name, string memory cid) internal returns (uint256 id) {
        vm.prank(publisher);
        id = models.propose(_spec(name, cid));
        vm.prank(curator);
        models.approve(id);
    }

    function _mint(address to, uint256 amount) internal {
        vm.prank(token.owner());
        token.mint(to, amount);
    }

    function _stake(address operator, uint256 amount) internal {
        _mint(operator, amount);
        vm.startPrank(operator);
        token.approve(address(nodes), amount);
        nodes.stake(amount);
        vm.stopPrank();
    }

    function _registerNode(address operator, string memory nodeId) internal {
        _stake(operator, MIN_STAKE);
        uint256[] memory hosted = new uint256[](1);
        hosted[0] = modelId;
        vm.prank(operator);
        nodes.register(nodeId, "http://127.0.0.1:8080", "{\"gpu\":\"rtx4090\",\"ram_gb\":64}", hosted);
    }

    function _deposit(address who, uint256 amount) internal {
        _mint(who, amount);
        vm.startPrank(who);
        token.approve(address(settlement), amount);
        settlement.deposit(amount);
        vm.stopPrank();
    }

    function _receipt(address payer_, address node_, uint256 tokens, uint256 amount)
        internal
        view
        returns (ISettlement.UsageReceipt memory)
    {
        return ISettlement.UsageReceipt({
            payer: payer_,
            node: node_,
            modelId: modelId,
            cumulativeTokens: tokens,
            cumulativeAmount: amount,
            expiry: block.timestamp + 1 days
        });
    }

    function _sign(uint256 pk, bytes32 digest) internal pure returns (ISettlement.Signature memory sig) {
        (sig.v, sig.r, sig.s) = vm.sign(pk, digest);
    }

    /// @dev A receipt signed by the payer and by the node.
    function _signed(uint256 payerPk, uint256 nodePk, ISettlement.UsageReceipt memory r)
        internal
        view
        returns (ISettlement.SignedReceipt memory s)
    {
        bytes32 digest = settlement.hashReceipt(r);
        s.receipt = r;
        s.payerSig = _sign(payerPk, digest);
        if (nodePk != 0) s.nodeSig = _sign(nodePk, digest);
    }

    function _one(ISettlement.SignedReceipt memory s) internal pure returns (ISettlement.SignedReceipt[] memory batch) {
        batch = new ISettlement.SignedReceipt[](1);
        batch[0] = s;
    }

    function _settleAs(address caller, ISettlement.SignedReceipt memory s)
        internal
        returns (uint256 settled, uint256 paid)
    {
        vm.prank(caller);
        return settlement.settle(_one(s));
    }

    /// @dev The (index, reason) of every ReceiptRejected in the recorded logs.
    function _rejections(Vm.Log[] memory logs)
        internal
        view
        returns (uint256[] memory indexes, bytes[] memory reasons)
    {
        uint256 n;
        for (uint256 i; i < logs.length; ++i) {
            if (_isRejection(logs[i])) ++n;
        }
        indexes = new uint256[](n);
        reasons = new bytes[](n);
        n = 0;
        for (uint256 i; i < logs.length; ++i) {
            if (!_isRejection(logs[i])) continue;
            (indexes[n], reasons[n]) = abi.decode(logs[i].data, (uint256, bytes));
            ++n;
        }
    }

    function _isRejection(Vm.Log memory log) internal view returns (bool) {
        return log.emitter == address(settlement) && log.topics.length > 0
            && log.topics[0] == ISettlement.ReceiptRejected.selector;
    }

    /// @dev Mints `assets` to `who` and deposits them into the vault.
    function _vaultDeposit(address who, uint256 assets) internal returns (uint256 shares) {
        _mint(who, assets);
        vm.startPrank(who);
        token.approve(address(vault), assets);
        shares = vault.deposit(assets, who);
        vm.stopPrank();
    }

    function _redeemAll(address who) internal returns (uint256 assets) {
        uint256 shares = vault.balanceOf(who);
        vm.prank(who);
        assets = vault.redeem(shares, who, who);
    }

    /// @dev forge-std's `bound`: maps any fuzzed value into [min, max] without discarding runs.
    function bound(uint256 x, uint256 min, uint256 max) internal pure returns (uint256) {
        require(min <= max, "bound: min > max");
        if (x >= min && x <= max) return x;
        uint256 size = max - min + 1;
        return min + (x % size);
    }
}

/// @dev Deploys the token from a separate contract so the owner is a plain address (admin).
contract NetworkTokenFactory {
    function make(address owner) external returns (NetworkToken) {
        return new NetworkToken(owner);
    }
}
