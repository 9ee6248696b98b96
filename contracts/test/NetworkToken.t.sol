// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Base} from "./utils/Base.sol";
import {NetworkToken} from "../src/NetworkToken.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";

contract NetworkTokenTest is Base {
    bytes32 internal constant PERMIT_TYPEHASH =
        keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)");
    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");

    // ------------------------------------------------------------------ metadata

    function test_metadata_nameSymbolDecimals() public view {
        vm.assertEq(token.name(), "llm-mesh NetworkToken", "name");
        vm.assertEq(token.symbol(), "MESH", "symbol");
        vm.assertEq(uint256(token.decimals()), 18, "decimals");
        vm.assertEq(token.totalSupply(), 0, "no premint");
        vm.assertEq(token.owner(), admin, "owner");
    }

    function test_eip712Domain_matchesDomainSeparator() public view {
        (, string memory name, string memory version, uint256 chainId, address verifying,,) = token.eip712Domain();
        vm.assertEq(name, "llm-mesh NetworkToken", "domain name");
        vm.assertEq(version, "1", "domain version");
        vm.assertEq(chainId, block.chainid, "chain id");
        vm.assertEq(verifying, address(token), "verifying contract");
        bytes32 expected = keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256(bytes(name)), keccak256(bytes(version)), chainId, verifying)
        );
        vm.assertEq(token.DOMAIN_SEPARATOR(), expected, "separator");
    }

    // ------------------------------------------------------------------ mint

    function test_mint_byOwnerCreditsAndRaisesSupply() public {
        vm.prank(admin);
        token.mint(payer, 123 ether);
        vm.assertEq(token.balanceOf(payer), 123 ether, "balance");
        vm.assertEq(token.totalSupply(), 123 ether, "supply");
    }

    function test_mint_emitsTransferFromZero() public {
        vm.expectEmit(true, true, false, true, address(token));
        emit IERC20.Transfer(address(0), payer, 5 ether);
        vm.prank(admin);
        token.mint(payer, 5 ether);
    }

    function test_RevertWhen_mintByNonOwner() public {
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        vm.prank(stranger);
        token.mint(stranger, 1 ether);
        vm.assertEq(token.totalSupply(), 0, "nothing minted");
    }

    function test_RevertWhen_mintToZeroAddress() public {
        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InvalidReceiver.selector, address(0)));
        vm.prank(admin);
        token.mint(address(0), 1 ether);
    }

    function test_transferOwnership_movesMintRight() public {
        vm.prank(admin);
        token.transferOwnership(curator);
        vm.prank(curator);
        token.mint(curator, 1 ether);
        vm.assertEq(token.balanceOf(curator), 1 ether, "new owner mints");

        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, admin));
        vm.prank(admin);
        token.mint(admin, 1 ether);
    }

    function test_renounceOwnership_fixesSupply() public {
        _mint(payer, 10 ether);
        vm.prank(admin);
        token.renounceOwnership();
        vm.assertEq(token.owner(), address(0), "no owner");

        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, admin));
        vm.prank(admin);
        token.mint(admin, 1 ether);
        vm.assertEq(token.totalSupply(), 10 ether, "supply fixed");
    }

    function testFuzz_mint_addsExactly(uint256 a, uint256 b) public {
        a = bound(a, 0, type(uint128).max);
        b = bound(b, 0, type(uint128).max);
        _mint(payer, a);
        _mint(payer2, b);
        vm.assertEq(token.balanceOf(payer), a, "payer");
        vm.assertEq(token.balanceOf(payer2), b, "payer2");
        vm.assertEq(token.totalSupply(), a + b, "supply");
    }

    // ------------------------------------------------------------------ ERC-20 basics

    function test_transfer_movesBalance() public {
        _mint(payer, 10 ether);
        vm.prank(payer);
        bool ok = token.transfer(payer2, 4 ether);
        vm.assertTrue(ok, "returns true");
        vm.assertEq(token.balanceOf(payer), 6 ether, "sender");
        vm.assertEq(token.balanceOf(payer2), 4 ether, "receiver");
    }

    function test_RevertWhen_transferExceedsBalance() public {
        _mint(payer, 1 ether);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, payer, 1 ether, 1 ether + 1)
        );
        vm.prank(payer);
        token.transfer(payer2, 1 ether + 1);
    }

    function test_transferFrom_spendsAllowance() public {
        _mint(payer, 10 ether);
        vm.prank(payer);
        token.approve(stranger, 6 ether);
        vm.assertEq(token.allowance(payer, stranger), 6 ether, "allowance set");

        vm.prank(stranger);
        token.transferFrom(payer, payer2, 4 ether);
        vm.assertEq(token.allowance(payer, stranger), 2 ether, "allowance spent");
        vm.assertEq(token.balanceOf(payer2), 4 ether, "received");
        vm.assertEq(token.balanceOf(payer), 6 ether, "debited");
    }

    function test_transferFrom_infiniteAllowanceIsNotSpent() public {
        _mint(payer, 10 ether);
        vm.prank(payer);
        token.approve(stranger, type(uint256).max);
        vm.prank(stranger);
        token.transferFrom(payer, payer2, 4 ether);
        vm.assertEq(token.allowance(payer, stranger), type(uint256).max, "still infinite");
    }

    function test_RevertWhen_transferFromExceedsAllowance() public {
        _mint(payer, 10 ether);
        vm.prank(payer);
        token.approve(stranger, 1 ether);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, stranger, 1 ether, 2 ether)
        );
        vm.prank(stranger);
        token.transferFrom(payer, stranger, 2 ether);
    }

    // ------------------------------------------------------------------ permit

    function _permitDigest(address owner, address spender, uint256 value, uint256 nonce, uint256 deadline)
        internal
        view
        returns (bytes32)
    {
        bytes32 structHash = keccak256(abi.encode(PERMIT_TYPEHASH, owner, spender, value, nonce, deadline));
        return keccak256(abi.encodePacked("\x19\x01", token.DOMAIN_SEPARATOR(), structHash));
    }

    function test_permit_setsAllowanceAndBumpsNonce() public {
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(PAYER_PK, _permitDigest(payer, stranger, 7 ether, 0, deadline));
        vm.assertEq(token.nonces(payer), 0, "nonce before");

        vm.expectEmit(true, true, false, true, address(token));
        emit IERC20.Approval(payer, stranger, 7 ether);
        vm.prank(stranger); // anyone may submit the signature
        token.permit(payer, stranger, 7 ether, deadline, v, r, s);

        vm.assertEq(token.allowance(payer, stranger), 7 ether, "allowance");
        vm.assertEq(token.nonces(payer), 1, "nonce after");
    }

    function test_permit_thenTransferFrom() public {
        _mint(payer, 10 ether);
        uint256 deadline = block.timestamp;
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(PAYER_PK, _permitDigest(payer, stranger, 3 ether, 0, deadline));
        token.permit(payer, stranger, 3 ether, deadline, v, r, s); // deadline == now is still valid
        vm.prank(stranger);
        token.transferFrom(payer, stranger, 3 ether);
        vm.assertEq(token.balanceOf(stranger), 3 ether, "pulled with permit");
    }

    function test_RevertWhen_permitExpired() public {
        uint256 deadline = block.timestamp - 1;
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(PAYER_PK, _permitDigest(payer, stranger, 1 ether, 0, deadline));
        vm.expectRevert(abi.encodeWithSelector(ERC20Permit.ERC2612ExpiredSignature.selector, deadline));
        token.permit(payer, stranger, 1 ether, deadline, v, r, s);
    }

    function test_RevertWhen_permitSignedByAnother() public {
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(PAYER2_PK, _permitDigest(payer, stranger, 1 ether, 0, deadline));
        vm.expectRevert(abi.encodeWithSelector(ERC20Permit.ERC2612InvalidSigner.selector, payer2, payer));
        token.permit(payer, stranger, 1 ether, deadline, v, r, s);
        vm.assertEq(token.allowance(payer, stranger), 0, "no allowance");
    }

    function test_RevertWhen_permitReplayed() public {
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(PAYER_PK, _permitDigest(payer, stranger, 1 ether, 0, deadline));
        token.permit(payer, stranger, 1 ether, deadline, v, r, s);

        // The replay is checked against nonce 1, so the signature recovers to some other address.
        address recovered = ecrecover(_permitDigest(payer, stranger, 1 ether, 1, deadline), v, r, s);
        vm.expectRevert(abi.encodeWithSelector(ERC20Permit.ERC2612InvalidSigner.selector, recovered, payer));
        token.permit(payer, stranger, 1 ether, deadline, v, r, s);
        vm.assertEq(token.nonces(payer), 1, "nonce used once");
    }

    function test_RevertWhen_permitValueAltered() public {
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(PAYER_PK, _permitDigest(payer, stranger, 1 ether, 0, deadline));
        address recovered = ecrecover(_permitDigest(payer, stranger, 100 ether, 0, deadline), v, r, s);
        vm.expectRevert(abi.encodeWithSelector(ERC20Permit.ERC2612InvalidSigner.selector, recovered, payer));
        token.permit(payer, stranger, 100 ether, deadline, v, r, s);
    }

    function testFuzz_permit_anyValueAndDeadline(uint256 value, uint256 deadline) public {
        deadline = bound(deadline, block.timestamp, type(uint64).max);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(PAYER_PK, _permitDigest(payer, payer2, value, 0, deadline));
        token.permit(payer, payer2, value, deadline, v, r, s);
        vm.assertEq(token.allowance(payer, payer2), value, "allowance");
        vm.assertEq(token.nonces(payer), 1, "nonce");
    }
}
