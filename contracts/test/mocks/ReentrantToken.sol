// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {NetworkToken} from "../../src/NetworkToken.sol";

/// @notice Receives a callback on every token movement (an ERC-777-style hook).
interface ITransferHook {
    /// @notice Called after `amount` moved from `from` to `to`.
    function onTokenTransfer(address from, address to, uint256 amount) external;
}

/// @notice A NetworkToken whose transfer and transferFrom call a hook after moving the balance, so
///         the hook can call back into the contract that is moving tokens (test-only attack helper).
contract ReentrantToken is NetworkToken {
    /// @notice The contract called on every transfer; zero disables the callback.
    address public hook;

    /// @param owner_ The minter.
    constructor(address owner_) NetworkToken(owner_) {}

    /// @notice Sets the hook (anyone: this token exists only in tests).
    /// @param hook_ The hook contract.
    function setHook(address hook_) external {
        hook = hook_;
    }

    function _update(address from, address to, uint256 value) internal override {
        super._update(from, to, value);
        address h = hook;
        if (h != address(0) && from != address(0) && to != address(0)) {
            ITransferHook(h).onTokenTransfer(from, to, value);
        }
    }
}
