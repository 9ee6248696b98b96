// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {ERC4626} from "@openzeppelin/contracts/token/ERC20/extensions/ERC4626.sol";
import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @title HysaVault
/// @notice ERC-4626 vault over NetworkToken. Settlement sends it 20% of every payment as plain
///         token transfers that mint no shares, so the assets behind every share grow and each
///         holder's share price rises. Slashed stake lands here too.
/// @dev Income arrives before anyone deposits (fees and slashes are transfers), so without care the
///      first deposits would round down to zero shares and be lost. Two defences: a decimals offset
///      of 6 (a million virtual shares per virtual asset, so rounding costs a depositor at most a
///      millionth of the vault's pre-existing assets and donation attacks cost the attacker
///      ~1e6 times what they take), and a revert instead of minting zero shares.
contract HysaVault is ERC4626 {
    /// @notice The deposit is too small to mint a single share at the current price.
    error ZeroShares(uint256 assets);

    uint8 private constant DECIMALS_OFFSET = 6;

    /// @param asset_ The NetworkToken.
    constructor(IERC20 asset_) ERC20("llm-mesh HYSA Vault", "hMESH") ERC4626(asset_) {}

    function _deposit(address caller, address receiver, uint256 assets, uint256 shares) internal override {
        if (shares == 0) revert ZeroShares(assets);
        super._deposit(caller, receiver, assets, shares);
    }

    function _decimalsOffset() internal pure override returns (uint8) {
        return DECIMALS_OFFSET;
    }
}
