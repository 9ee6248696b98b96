// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

/// @title IHysaVault
/// @notice The vault's income side: tokens that arrive without minting shares (the 20% of every
///         settlement, slashed stake, donations) vest into `totalAssets` over time instead of
///         raising the share price in one step, so capital that enters just before income and
///         leaves just after earns nothing of it.
interface IHysaVault {
    /// @notice New income began vesting: `vesting` is all income not yet in totalAssets, fully
    ///         vested at `vestingEnd`.
    event IncomeSynced(uint256 income, uint256 vesting, uint64 vestingEnd);

    /// @notice Starts vesting whatever arrived since the last sync. Settlement and the node
    ///         registry call it after paying the vault; anyone may call it after a donation.
    function sync() external;

    /// @notice Income that has arrived but is not yet part of totalAssets.
    /// @return unvested Synced income still vesting.
    /// @return unsynced Tokens that arrived since the last sync (they vest from the next sync).
    /// @return vestingEnd When the synced income is fully vested.
    function pendingIncome() external view returns (uint256 unvested, uint256 unsynced, uint64 vestingEnd);
}
