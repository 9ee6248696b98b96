// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title NetworkToken
/// @notice The llm-mesh token: operators stake it, users pay with it, the HYSA vault holds it.
/// @dev ERC-20 with EIP-2612 permit so a user can approve and deposit in one transaction. The owner
///      mints (the devnet faucet, or a launch distribution); renouncing ownership fixes the supply.
contract NetworkToken is ERC20, ERC20Permit, Ownable {
    /// @param initialOwner The account allowed to mint.
    constructor(address initialOwner)
        ERC20("llm-mesh NetworkToken", "MESH")
        ERC20Permit("llm-mesh NetworkToken")
        Ownable(initialOwner)
    {}

    /// @notice Mints new tokens.
    /// @param to The receiver.
    /// @param amount The amount in base units (18 decimals).
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
