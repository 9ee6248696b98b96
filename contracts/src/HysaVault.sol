// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {ERC4626} from "@openzeppelin/contracts/token/ERC20/extensions/ERC4626.sol";
import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {IHysaVault} from "./interfaces/IHysaVault.sol";

/// @title HysaVault
/// @notice ERC-4626 vault over NetworkToken. Settlement sends it 20% of every payment, and the node
///         registry slashed stake, as plain transfers that mint no shares. That income vests into
///         `totalAssets` linearly over `VESTING_PERIOD`, so every holder's share price rises with
///         the time it held, and a deposit made just before income and redeemed just after (a
///         sandwich around a large settle) gets none of it.
/// @dev Income arriving while earlier income still vests is merged into one linear schedule whose
///      end is the amount-weighted mean of both ends: dust donations cannot push the existing
///      income's end out. Two more defences for income that arrives before anyone deposits: a
///      decimals offset of 6 (a million virtual shares per virtual asset, so rounding costs a
///      depositor at most a millionth of the vault's assets and donation attacks cost ~1e6 times
///      what they take), and a revert instead of minting zero shares.
contract HysaVault is ERC4626, IHysaVault {
    using SafeCast for uint256;

    /// @notice The deposit is too small to mint a single share at the current price.
    error ZeroShares(uint256 assets);

    /// @notice How long income takes to reach totalAssets in full.
    uint256 public constant VESTING_PERIOD = 7 days;

    uint8 private constant DECIMALS_OFFSET = 6;

    /// @dev The vault's token balance at the last sync or share movement: totalAssets + unvested.
    uint256 private _accounted;
    uint128 private _vesting; // income not yet vested at _lastSync
    uint64 private _lastSync;
    uint64 private _vestingEnd;

    /// @param asset_ The NetworkToken.
    constructor(IERC20 asset_) ERC20("llm-mesh HYSA Vault", "hMESH") ERC4626(asset_) {}

    /// @inheritdoc IHysaVault
    function sync() public {
        uint256 balance = IERC20(asset()).balanceOf(address(this));
        if (balance <= _accounted) return;
        uint256 income = balance - _accounted;
        uint256 unvested = _unvested();
        uint256 remaining = block.timestamp < _vestingEnd ? _vestingEnd - block.timestamp : 0;
        uint256 vesting = unvested + income;
        uint64 end = (block.timestamp + Math.mulDiv(unvested, remaining, vesting)
                + Math.mulDiv(income, VESTING_PERIOD, vesting, Math.Rounding.Ceil))
        .toUint64();
        _accounted = balance;
        _vesting = vesting.toUint128();
        _lastSync = uint64(block.timestamp);
        _vestingEnd = end;
        emit IncomeSynced(income, vesting, end);
    }

    /// @inheritdoc IHysaVault
    function pendingIncome() external view returns (uint256 unvested, uint256 unsynced, uint64 vestingEnd) {
        uint256 balance = IERC20(asset()).balanceOf(address(this));
        return (_unvested(), balance > _accounted ? balance - _accounted : 0, _vestingEnd);
    }

    /// @notice Assets behind the shares: everything received, less income still vesting and
    ///         income not yet synced.
    /// @return The assets.
    function totalAssets() public view override returns (uint256) {
        return _accounted - _unvested();
    }

    /// @inheritdoc ERC4626
    function deposit(uint256 assets, address receiver) public override returns (uint256) {
        sync();
        return super.deposit(assets, receiver);
    }

    /// @inheritdoc ERC4626
    function mint(uint256 shares, address receiver) public override returns (uint256) {
        sync();
        return super.mint(shares, receiver);
    }

    /// @inheritdoc ERC4626
    function withdraw(uint256 assets, address receiver, address owner) public override returns (uint256) {
        sync();
        return super.withdraw(assets, receiver, owner);
    }

    /// @inheritdoc ERC4626
    function redeem(uint256 shares, address receiver, address owner) public override returns (uint256) {
        sync();
        return super.redeem(shares, receiver, owner);
    }

    /// @dev Rounded up, so totalAssets never counts a wei before it vested.
    function _unvested() private view returns (uint256) {
        uint256 end = _vestingEnd;
        if (block.timestamp >= end) return 0;
        return Math.mulDiv(_vesting, end - block.timestamp, end - _lastSync, Math.Rounding.Ceil);
    }

    function _deposit(address caller, address receiver, uint256 assets, uint256 shares) internal override {
        if (shares == 0) revert ZeroShares(assets);
        super._deposit(caller, receiver, assets, shares);
        _accounted += assets;
    }

    function _withdraw(address caller, address receiver, address owner, uint256 assets, uint256 shares)
        internal
        override
    {
        _accounted -= assets;
        super._withdraw(caller, receiver, owner, assets, shares);
    }

    function _decimalsOffset() internal pure override returns (uint8) {
        return DECIMALS_OFFSET;
    }
}
