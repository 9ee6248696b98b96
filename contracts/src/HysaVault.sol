// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {ERC4626} from "@openzeppelin/contracts/token/ERC20/extensions/ERC4626.sol";
import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @title HysaVault
/// @notice ERC-4626 vault over NetworkToken. Settlement sends it 20% of every payment as plain
///         token transfers that mint no shares, so the assets behind every share grow and each
///         holder's share price rises. Slashed stake lands here too.
/// @dev OpenZeppelin's virtual shares and assets make the first-depositor inflation attack
///      unprofitable, so no extra decimals offset is needed.
contract HysaVault is ERC4626 {
    /// @param asset_ The NetworkToken.
    constructor(IERC20 asset_) ERC20("llm-mesh HYSA Vault", "hMESH") ERC4626(asset_) {}
}
