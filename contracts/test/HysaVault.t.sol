// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Base} from "./utils/Base.sol";
import {HysaVault} from "../src/HysaVault.sol";
import {ISettlement} from "../src/interfaces/ISettlement.sol";
import {IERC4626} from "@openzeppelin/contracts/interfaces/IERC4626.sol";
import {ERC4626} from "@openzeppelin/contracts/token/ERC20/extensions/ERC4626.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";

/// @dev The vault has a decimals offset of 6: shares have 24 decimals and an empty vault mints
///      VIRTUAL_SHARES (1e6) shares per asset base unit. Conversions are
///        shares = assets * (totalSupply + 1e6) / (totalAssets + 1)    (deposit: rounded down)
///        assets = shares * (totalAssets + 1) / (totalSupply + 1e6)    (redeem: rounded down)
///      so the 1e6 virtual shares own a slice of whatever the vault holds.
contract HysaVaultTest is Base {
    /// @dev 10 ** _decimalsOffset(): shares per asset base unit on an empty vault.
    uint256 internal constant VIRTUAL_SHARES = 1e6;
    /// @dev One whole share (10 ** decimals()); worth 1 MESH until yield arrives.
    uint256 internal constant ONE_SHARE = 1e24;

    address internal attacker = address(0xBAD);

    /// @dev Like _vaultDeposit, but the deposit must revert with ZeroShares(assets).
    function _vaultDepositExpectZeroShares(address who, uint256 assets) internal {
        _mint(who, assets);
        vm.prank(who);
        token.approve(address(vault), assets);
        vm.expectRevert(abi.encodeWithSelector(HysaVault.ZeroShares.selector, assets));
        vm.prank(who);
        vault.deposit(assets, who);
    }

    /// @dev Plain transfer to the vault, as Settlement and slashing do (assets arrive, no shares),
    ///      then a sync and one vesting period, so the income is fully in totalAssets.
    function _donate(address from, uint256 amount) internal {
        _donateUnvested(from, amount);
        vm.warp(block.timestamp + vault.VESTING_PERIOD());
    }

    /// @dev The transfer and sync alone: the income starts vesting now.
    function _donateUnvested(address from, uint256 amount) internal {
        _mint(from, amount);
        vm.prank(from);
        token.transfer(address(vault), amount);
        vault.sync();
    }

    function _vest() internal {
        vm.warp(block.timestamp + vault.VESTING_PERIOD());
    }

    /// @dev The value of one share (base unit), rounded up: what a depositor can lose to rounding.
    function _sharePriceCeil() internal view returns (uint256) {
        uint256 denominator = vault.totalSupply() + VIRTUAL_SHARES;
        return (vault.totalAssets() + 1 + denominator - 1) / denominator;
    }

    function _absDiff(uint256 a, uint256 b) internal pure returns (uint256) {
        return a > b ? a - b : b - a;
    }

    // ------------------------------------------------------------------ metadata

    function test_metadata_wrapsNetworkToken() public view {
        vm.assertEq(vault.name(), "llm-mesh HYSA Vault", "name");
        vm.assertEq(vault.symbol(), "hMESH", "symbol");
        vm.assertEq(vault.asset(), address(token), "asset");
        vm.assertEq(uint256(token.decimals()), 18, "asset decimals");
        vm.assertEq(uint256(vault.decimals()), 24, "share decimals = 18 + offset 6");
        vm.assertEq(vault.totalAssets(), 0, "empty");
        vm.assertEq(vault.totalSupply(), 0, "no shares");
        vm.assertEq(vault.convertToShares(1), VIRTUAL_SHARES, "1 wei buys 1e6 shares when empty");
        vm.assertEq(vault.convertToAssets(ONE_SHARE), 1 ether, "one whole share is one MESH when empty");
    }

    // ------------------------------------------------------------------ deposit / mint / withdraw / redeem

    function test_deposit_mintsVirtualShareRatioWhenEmpty() public {
        uint256 shares = _vaultDeposit(payer, 100 ether);
        vm.assertEq(shares, 100 ether * VIRTUAL_SHARES, "1e6 shares per wei");
        vm.assertEq(shares, 100 * ONE_SHARE, "100 whole shares");
        vm.assertEq(vault.balanceOf(payer), 100 * ONE_SHARE, "share balance");
        vm.assertEq(vault.totalSupply(), 100 * ONE_SHARE, "supply");
        vm.assertEq(vault.totalAssets(), 100 ether, "assets");
        vm.assertEq(vault.convertToAssets(shares), 100 ether, "worth the deposit");
        vm.assertEq(token.balanceOf(address(vault)), 100 ether, "tokens held");
        vm.assertEq(token.balanceOf(payer), 0, "tokens pulled");
    }

    function test_deposit_oneWeiWhenEmpty() public {
        uint256 shares = _vaultDeposit(payer, 1);
        vm.assertEq(shares, VIRTUAL_SHARES, "even 1 wei mints shares");
        vm.assertEq(_redeemAll(payer), 1, "and redeems for it");
    }

    function test_deposit_emitsDeposit() public {
        _mint(payer, 10 ether);
        vm.prank(payer);
        token.approve(address(vault), 10 ether);
        vm.expectEmit(true, true, false, true, address(vault));
        emit IERC4626.Deposit(payer, payer2, 10 ether, 10 * ONE_SHARE);
        vm.prank(payer);
        vault.deposit(10 ether, payer2);
        vm.assertEq(vault.balanceOf(payer2), 10 * ONE_SHARE, "receiver holds the shares");
        vm.assertEq(vault.balanceOf(payer), 0, "caller holds none");
    }

    function test_RevertWhen_depositWithoutAllowance() public {
        _mint(payer, 10 ether);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, address(vault), 0, 10 ether)
        );
        vm.prank(payer);
        vault.deposit(10 ether, payer);
    }

    function test_redeem_returnsAssetsAndBurnsShares() public {
        _vaultDeposit(payer, 100 ether);
        vm.expectEmit(true, true, true, true, address(vault));
        emit IERC4626.Withdraw(payer, payer, payer, 40 ether, 40 * ONE_SHARE);
        vm.prank(payer);
        uint256 assets = vault.redeem(40 * ONE_SHARE, payer, payer);
        vm.assertEq(assets, 40 ether, "assets out");
        vm.assertEq(token.balanceOf(payer), 40 ether, "received");
        vm.assertEq(vault.balanceOf(payer), 60 * ONE_SHARE, "shares left");
        vm.assertEq(vault.totalSupply(), 60 * ONE_SHARE, "supply");
        vm.assertEq(vault.totalAssets(), 60 ether, "assets left");
    }

    function test_RevertWhen_redeemMoreThanOwned() public {
        _vaultDeposit(payer, 100 ether);
        vm.expectRevert(
            abi.encodeWithSelector(
                ERC4626.ERC4626ExceededMaxRedeem.selector, payer, 100 * ONE_SHARE + 1, 100 * ONE_SHARE
            )
        );
        vm.prank(payer);
        vault.redeem(100 * ONE_SHARE + 1, payer, payer);
    }

    function test_RevertWhen_redeemOthersSharesWithoutAllowance() public {
        _vaultDeposit(payer, 100 ether);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, stranger, 0, ONE_SHARE)
        );
        vm.prank(stranger);
        vault.redeem(ONE_SHARE, stranger, payer);
    }

    function test_mintAndWithdraw_roundTrip() public {
        _mint(payer, 50 ether);
        vm.startPrank(payer);
        token.approve(address(vault), 50 ether);
        uint256 assetsIn = vault.mint(20 * ONE_SHARE, payer);
        vm.assertEq(vault.balanceOf(payer), 20 * ONE_SHARE, "minted exactly");
        uint256 sharesBurned = vault.withdraw(20 ether, payer, payer);
        vm.stopPrank();
        vm.assertEq(assetsIn, 20 ether, "20 whole shares cost 20 MESH");
        vm.assertEq(sharesBurned, 20 * ONE_SHARE, "withdrawing 20 MESH burns 20 whole shares");
        vm.assertEq(token.balanceOf(payer), 50 ether, "all back");
        vm.assertEq(vault.totalSupply(), 0, "no shares left");
    }

    function testFuzz_depositRedeem_roundTripNeverGains(uint256 assets) public {
        assets = bound(assets, 1, 1e30);
        uint256 shares = _vaultDeposit(payer, assets);
        vm.assertEq(shares, assets * VIRTUAL_SHARES, "1e6 shares per wei on an empty vault");
        uint256 out = _redeemAll(payer);
        vm.assertEq(out, assets, "exact round trip");
        vm.assertEq(vault.totalSupply(), 0, "all burned");
        vm.assertEq(vault.totalAssets(), 0, "all paid out");
    }

    // ------------------------------------------------------------------ zero shares

    function test_RevertWhen_depositMintsZeroShares() public {
        // 100 MESH of fees arrive before anyone deposits: one share is worth (100e18 + 1) / 1e6 wei,
        // so a deposit of at most 1e14 wei buys less than a share.
        _donate(developers, 100 ether);
        uint256 dust = 100 ether / VIRTUAL_SHARES;
        vm.assertEq(vault.previewDeposit(dust), 0, "preview rounds to zero");
        _vaultDepositExpectZeroShares(payer, dust);
        vm.assertEq(token.balanceOf(payer), dust, "depositor keeps its tokens");
        vm.assertEq(vault.totalSupply(), 0, "nothing minted");
        vm.assertEq(vault.totalAssets(), 100 ether, "vault took nothing");

        // One wei more buys exactly one share, and the vault takes the deposit.
        uint256 shares = _vaultDeposit(payer2, dust + 1);
        vm.assertEq(shares, 1, "one share");
        vm.assertEq(vault.totalAssets(), 100 ether + dust + 1, "deposit taken");
    }

    function test_RevertWhen_depositOrMintZero() public {
        _vaultDepositExpectZeroShares(payer, 0);
        vm.expectRevert(abi.encodeWithSelector(HysaVault.ZeroShares.selector, 0));
        vm.prank(payer);
        vault.mint(0, payer);
    }

    // ------------------------------------------------------------------ income before the first deposit

    /// @dev The bug the offset fixes: with no offset, 100 MESH of fees followed by deposit(100 MESH)
    ///      minted 100e18 * 1 / (100e18 + 1) = 0 shares and the depositor lost everything.
    function test_firstDeposit_afterFeesArrived_keepsDepositorWhole() public {
        uint256 fees = 100 ether;
        uint256 deposit = 100 ether;
        _donate(developers, fees);
        uint256 shares = _vaultDeposit(payer, deposit);
        // The 1e6 virtual shares priced the fees; the same amount buys just under as many shares
        // (100e18 * 1e6 / (100e18 + 1), rounded down).
        vm.assertEq(shares, VIRTUAL_SHARES - 1, "deposit buys shares");

        uint256 out = _redeemAll(payer);
        uint256 loss = deposit - out; // reverts (underflow) if the depositor gained
        // Rounding costs at most a millionth of what the vault already held (0.0001 MESH here).
        vm.assertLe(loss, fees / VIRTUAL_SHARES, "loss at most a millionth of the pre-existing assets");
        // Exactly: with s = 1e6 - 1 shares out of s + 1e6 and 2 * fees + 1 in assets,
        // loss = deposit - floor(s * (2F + 1) / (2V - 1)) = ceil((F - V + 1) / (2V - 1)) ~ 0.00005 MESH.
        vm.assertEq(
            loss, (fees - VIRTUAL_SHARES + 1 + 2 * VIRTUAL_SHARES - 2) / (2 * VIRTUAL_SHARES - 1), "exact rounding loss"
        );
        vm.assertEq(loss, 50_000_025_000_013, "~5e13 wei");
        vm.assertEq(vault.totalSupply(), 0, "all shares burned");
        vm.assertEq(vault.totalAssets(), fees + loss, "fees and rounding stay for later holders");
    }

    function testFuzz_firstDeposit_afterFeesArrived_lossBounded(uint256 fees, uint256 deposit) public {
        fees = bound(fees, 1, 1e27);
        deposit = bound(deposit, 1, 1e27);
        _donate(developers, fees);
        if (deposit * VIRTUAL_SHARES < fees + 1) {
            // Worth less than one share: refused instead of swallowed.
            _vaultDepositExpectZeroShares(payer, deposit);
            vm.assertEq(token.balanceOf(payer), deposit, "depositor keeps its tokens");
            vm.assertEq(vault.totalSupply(), 0, "nothing minted");
            return;
        }
        uint256 shares = _vaultDeposit(payer, deposit);
        vm.assertGt(shares, 0, "shares minted");
        uint256 out = _redeemAll(payer);
        vm.assertLe(out, deposit, "round trip never gains");
        // At most one share at the price paid: ceil((fees + 1) / 1e6) = fees / 1e6 + 1.
        vm.assertGe(out + fees / VIRTUAL_SHARES + 1, deposit, "loss at most a millionth of the fees, plus 1 wei");
        vm.assertEq(vault.totalAssets(), fees + deposit - out, "accounting");
    }

    // ------------------------------------------------------------------ yield: assets without shares

    function test_donation_raisesSharePriceWithoutMintingShares() public {
        _vaultDeposit(payer, 100 ether);
        uint256 before = vault.convertToAssets(ONE_SHARE);
        vm.assertEq(before, 1 ether, "one share = one MESH");
        _donate(developers, 50 ether);
        vm.assertEq(vault.totalSupply(), 100 * ONE_SHARE, "no shares minted");
        vm.assertEq(vault.totalAssets(), 150 ether, "assets grew");
        vm.assertGt(vault.convertToAssets(ONE_SHARE), before, "price rose");
        vm.assertGe(vault.convertToAssets(ONE_SHARE), 1.5 ether - 1, "to ~1.5 MESH");
        uint256 out = _redeemAll(payer);
        // The virtual shares keep their (sub-wei) slice of the yield: 50e18 * 1e6 / (100e24 + 1e6) < 1.
        vm.assertLe(out, 150 ether, "not more than the vault holds");
        vm.assertGe(out, 150 ether - 2, "holder receives the yield");
    }

    function test_donation_splitsProRata() public {
        _vaultDeposit(payer, 100 ether);
        _vaultDeposit(payer2, 300 ether);
        _donate(developers, 40 ether);
        uint256 out1 = _redeemAll(payer);
        uint256 out2 = _redeemAll(payer2);
        vm.assertLe(_absDiff(out1, 110 ether), 2, "payer +10");
        vm.assertLe(_absDiff(out2, 330 ether), 2, "payer2 +30");
        vm.assertLe(out1 + out2, 440 ether, "never more than held");
    }

    function test_lateDepositor_doesNotCaptureEarlierYield() public {
        _vaultDeposit(payer, 100 ether);
        _donate(developers, 100 ether);
        uint256 lateShares = _vaultDeposit(payer2, 100 ether);
        // Half the shares at twice the price: 50 whole shares, off by less than what one wei buys
        // at that price (1e6 / 2 shares).
        vm.assertLe(_absDiff(lateShares, 50 * ONE_SHARE), VIRTUAL_SHARES / 2, "half the shares at twice the price");
        uint256 late = _redeemAll(payer2);
        uint256 early = _redeemAll(payer);
        vm.assertLe(late, 100 ether, "late depositor gets back at most its deposit");
        vm.assertGe(late, 100 ether - 2, "minus rounding");
        vm.assertLe(early, 200 ether, "early depositor gets at most deposit + yield");
        vm.assertGe(early, 200 ether - 2, "early depositor keeps the yield");
    }

    function testFuzz_donation_raisesPriceWithoutMintingShares(uint256 deposit, uint256 donation) public {
        deposit = bound(deposit, 1 ether, 1e30);
        donation = bound(donation, 1, 1e30);
        uint256 shares = _vaultDeposit(payer, deposit);
        vm.assertEq(shares, deposit * VIRTUAL_SHARES, "first deposit at the virtual ratio");
        uint256 priceBefore = vault.convertToAssets(ONE_SHARE);
        _donate(developers, donation);
        vm.assertEq(vault.totalSupply(), shares, "no shares minted");
        vm.assertEq(vault.totalAssets(), deposit + donation, "assets grew by the donation");
        vm.assertGe(vault.convertToAssets(ONE_SHARE), priceBefore, "price never falls");
        uint256 out = _redeemAll(payer);
        vm.assertLe(out, deposit + donation, "bounded by holdings");
        // The virtual shares' slice is donation * 1e6 / (deposit * 1e6 + 1e6) = donation / (deposit + 1),
        // so the holder misses at most donation / deposit + 1 wei, plus 1 for rounding down.
        vm.assertGe(out + donation / deposit + 2, deposit + donation, "holder gets the donation");
    }

    function test_slash_landsInVaultAndRaisesPrice() public {
        _vaultDeposit(payer, 100 ether);
        _stake(node, 2000 ether);
        vm.prank(slasher);
        nodes.slash(node, 100 ether, "bad output");
        vm.assertEq(vault.totalAssets(), 100 ether, "the slash starts vesting, nothing yet");
        _vest();
        vm.assertEq(vault.totalSupply(), 100 * ONE_SHARE, "no shares minted");
        vm.assertEq(vault.totalAssets(), 200 ether, "slash became yield");
        uint256 out = _redeemAll(payer);
        vm.assertLe(out, 200 ether, "not more than held");
        vm.assertGe(out, 200 ether - 2, "holder receives it");
    }

    function test_settlementFee_landsInVaultAndRaisesPrice() public {
        _vaultDeposit(payer2, 10 ether);
        _registerNode(node, "node-1");
        _deposit(payer, 100 ether);
        ISettlement.SignedReceipt memory s = _signed(PAYER_PK, NODE_PK, _receipt(payer, node, 1000, 2 ether));
        settlement.settle(_one(s));
        vm.assertEq(vault.totalAssets(), 10 ether, "the fee starts vesting, nothing yet");
        _vest();
        vm.assertEq(vault.totalSupply(), 10 * ONE_SHARE, "no shares minted");
        vm.assertEq(vault.totalAssets(), 10.4 ether, "20% of 2 MESH");
        uint256 out = _redeemAll(payer2);
        vm.assertLe(out, 10.4 ether, "not more than held");
        vm.assertGe(out, 10.4 ether - 2, "holder receives the fee");
    }

    // ------------------------------------------------------------------ vesting

    function test_vesting_linearOverThePeriod() public {
        _vaultDeposit(payer, 100 ether);
        _donateUnvested(developers, 70 ether);
        vm.assertEq(vault.totalAssets(), 100 ether, "nothing at once");
        (uint256 unvested,, uint64 end) = vault.pendingIncome();
        vm.assertEq(unvested, 70 ether, "all vesting");
        vm.assertEq(uint256(end), block.timestamp + 7 days, "over seven days");
        vm.warp(block.timestamp + 1 days);
        vm.assertEq(vault.totalAssets(), 110 ether, "a seventh after one day");
        vm.warp(block.timestamp + 6 days);
        vm.assertEq(vault.totalAssets(), 170 ether, "all after seven");
        vm.warp(block.timestamp + 30 days);
        vm.assertEq(vault.totalAssets(), 170 ether, "and no more");
    }

    function test_vesting_unsyncedIncomeWaitsForSync() public {
        _vaultDeposit(payer, 100 ether);
        _mint(developers, 10 ether);
        vm.prank(developers);
        token.transfer(address(vault), 10 ether);
        (, uint256 unsynced,) = vault.pendingIncome();
        vm.assertEq(unsynced, 10 ether, "seen as unsynced");
        vm.warp(block.timestamp + 30 days);
        vm.assertEq(vault.totalAssets(), 100 ether, "not counted before a sync");
        vault.sync();
        vm.assertEq(vault.totalAssets(), 100 ether, "vesting starts at the sync");
        _vest();
        vm.assertEq(vault.totalAssets(), 110 ether, "then vests");
    }

    function test_vesting_longHolderKeepsItsShareOfIncomeThatArrivedBeforeOthers() public {
        _vaultDeposit(payer, 100 ether);
        _donateUnvested(developers, 70 ether);
        vm.warp(block.timestamp + 3.5 days); // half vested: 135 MESH behind payer's shares
        uint256 lateShares = _vaultDeposit(payer2, 135 ether); // same capital as payer now has
        vm.assertLe(_absDiff(lateShares, 100 * ONE_SHARE), VIRTUAL_SHARES, "bought at the vested price");
        _vest();
        uint256 early = _redeemAll(payer);
        uint256 late = _redeemAll(payer2);
        // The second half (35 MESH) vested while both held equal shares: 17.5 each.
        vm.assertLe(_absDiff(early, 152.5 ether), 2, "first half all, second half shared");
        vm.assertLe(_absDiff(late, 152.5 ether), 2, "late holder earns only while it held");
    }

    function test_vesting_dustCannotPushOutTheEndOfEarlierIncome() public {
        _vaultDeposit(payer, 100 ether);
        _donateUnvested(developers, 700 ether);
        (,, uint64 end) = vault.pendingIncome();
        vm.warp(block.timestamp + 3 days);
        _donateUnvested(stranger, 1); // a griefer's dust, synced at once
        (,, uint64 endAfter) = vault.pendingIncome();
        vm.assertLe(uint256(endAfter) - uint256(end), 1, "end moved by at most a second");
        vm.warp(uint256(end) + 1);
        vm.assertGe(vault.totalAssets(), 800 ether, "the income vested on time");
    }

    function test_vesting_roundTripWithinOneBlockGetsNothing() public {
        _vaultDeposit(payer, 1001 ether);
        uint256 shares = _vaultDeposit(attacker, 100_000 ether);
        _donateUnvested(developers, 10_000 ether);
        uint256 out = _redeemAll(attacker);
        vm.assertLe(out, 100_000 ether, "no profit");
        vm.assertGt(shares, 0, "attacker held shares while the income arrived");
        _vest();
        // All of it but the virtual shares' slice: 10,000e18 * 1e6 / 1001e24 ~ 10 wei.
        vm.assertGe(_redeemAll(payer), 11_001 ether - 11, "the holder gets all of it");
    }

    function testFuzz_vesting_neverCountsMoreThanHeld(uint256 a, uint256 b, uint256 t1, uint256 t2) public {
        a = bound(a, 1, 1e27);
        b = bound(b, 1, 1e27);
        _vaultDeposit(payer, 1 ether);
        _donateUnvested(developers, a);
        vm.warp(block.timestamp + bound(t1, 0, 10 days));
        uint256 before = vault.totalAssets();
        _donateUnvested(developers, b);
        vm.assertEq(vault.totalAssets(), before, "a sync never moves totalAssets");
        vm.warp(block.timestamp + bound(t2, 0, 10 days));
        vm.assertLe(vault.totalAssets(), token.balanceOf(address(vault)), "never more than held");
        vm.assertGe(vault.totalAssets(), before, "never falls");
        _vest();
        _vest();
        vm.assertEq(vault.totalAssets(), 1 ether + a + b, "all income vests");
    }

    // ------------------------------------------------------------------ first-depositor inflation

    /// @dev The classic attack: deposit 1 wei, donate a lot, hope the next deposit rounds to few
    ///      shares. The attacker's 1 wei buys 1e6 shares, as many as the virtual shares, so half of
    ///      everything it donates goes to the virtual shares.
    function test_inflationAttack_attackerLoses() public {
        uint256 donation = 10 ether;
        uint256 victimDeposit = 100 ether;
        vm.assertEq(_vaultDeposit(attacker, 1), VIRTUAL_SHARES, "1 wei buys 1e6 shares");
        _donate(attacker, donation);
        // One share is now worth ceil((10e18 + 2) / 2e6) wei.
        uint256 shareValue = _sharePriceCeil();
        vm.assertEq(shareValue, (donation + 2 + 2 * VIRTUAL_SHARES - 1) / (2 * VIRTUAL_SHARES), "share value");
        uint256 victimShares = _vaultDeposit(payer, victimDeposit);
        vm.assertGt(victimShares, 0, "victim got shares");

        uint256 attackerOut = _redeemAll(attacker);
        uint256 victimOut = _redeemAll(payer);
        vm.assertLt(attackerOut, donation + 1, "attacker ends with less than it put in");
        // The victim loses at most the value of one share at its deposit price (~5e12 wei here).
        uint256 victimLoss = victimDeposit - victimOut; // reverts if the victim gained
        vm.assertLe(victimLoss, shareValue, "victim loss bounded by one share");
        // Half of the donation went to the virtual shares; the attacker recovers at most the other
        // half plus what the victim lost to rounding.
        vm.assertLe(attackerOut, (donation + 1) / 2 + victimLoss, "attacker recovers at most half");
        vm.assertGt(victimOut, attackerOut, "victim keeps the bigger part");
    }

    /// @dev Griefing: 1 wei + 1000 MESH donation. Without the offset, a 499 MESH deposit would have
    ///      minted 499e18 * 2 / (1000e18 + 2) = 0 shares and handed everything to the attacker.
    function test_inflationAttack_griefingVictimKeepsItsDeposit() public {
        uint256 donation = 1000 ether;
        uint256 victimDeposit = 499 ether;
        _vaultDeposit(attacker, 1);
        _donate(attacker, donation);
        uint256 attackerIn = donation + 1;
        uint256 shareValue = _sharePriceCeil();
        vm.assertEq(shareValue, 500_000_000_000_001, "one share worth ~0.0005 MESH");

        // A deposit worth less than one share is refused rather than swallowed.
        _vaultDepositExpectZeroShares(payer2, shareValue - 1);
        vm.assertEq(token.balanceOf(payer2), shareValue - 1, "dust depositor keeps its tokens");

        // The 499 MESH deposit does not revert: it buys ~998k shares (499e18 * 2e6 / (1000e18 + 2)).
        uint256 victimShares = _vaultDeposit(payer, victimDeposit);
        vm.assertEq(victimShares, 997_999, "victim got shares");

        uint256 attackerOut = _redeemAll(attacker);
        uint256 victimOut = _redeemAll(payer);
        uint256 victimLoss = victimDeposit - victimOut; // reverts if the victim gained
        vm.assertLe(victimLoss, shareValue, "victim loses at most one share (~1 ppm)");
        vm.assertLe(victimLoss * 1e6, victimDeposit, "victim loss below a millionth of its deposit");

        uint256 attackerLoss = attackerIn - attackerOut; // reverts if the attacker profited
        // The virtual shares took half the donation.
        vm.assertGe(attackerLoss, donation / 2 - victimLoss, "attacker loses about half its donation");
        vm.assertGe(attackerLoss, victimLoss * 1e6, "attack costs the attacker > 1e6 times what it takes");
        vm.assertEq(vault.totalSupply(), 0, "all redeemed");
        vm.assertEq(vault.totalAssets(), attackerIn + victimDeposit - attackerOut - victimOut, "conservation");
    }

    function testFuzz_inflationAttack_attackerNeverProfits(uint256 seed, uint256 donation, uint256 victimDeposit)
        public
    {
        uint256 attackerDeposit = bound(seed, 1, 1 ether);
        donation = bound(donation, 0, 1e27);
        victimDeposit = bound(victimDeposit, 1, 1e27);

        _vaultDeposit(attacker, attackerDeposit);
        if (donation != 0) _donate(attacker, donation);
        uint256 attackerIn = attackerDeposit + donation;
        // Value of one share, rounded up, just before the victim deposits.
        uint256 shareValue = _sharePriceCeil();

        if (victimDeposit * (vault.totalSupply() + VIRTUAL_SHARES) < vault.totalAssets() + 1) {
            // The deposit is worth less than one share: it reverts and the victim keeps everything.
            _vaultDepositExpectZeroShares(payer, victimDeposit);
            vm.assertLt(victimDeposit, shareValue, "only deposits below one share are refused");
            vm.assertEq(token.balanceOf(payer), victimDeposit, "victim keeps its tokens");
            vm.assertLe(_redeemAll(attacker), attackerIn, "attacker never profits");
            return;
        }

        vm.assertGt(_vaultDeposit(payer, victimDeposit), 0, "victim got shares");
        uint256 attackerOut = _redeemAll(attacker);
        uint256 victimOut = _redeemAll(payer);

        vm.assertLe(attackerOut, attackerIn, "attacker never profits");
        vm.assertLe(victimOut, victimDeposit, "victim gains nothing from the attacker");
        vm.assertGe(victimOut + shareValue, victimDeposit, "victim loses at most one share of rounding");
        vm.assertLe(attackerOut + victimOut, attackerIn + victimDeposit, "vault never pays out more than it got");
    }
}
