// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Base} from "./utils/Base.sol";
import {ISettlement} from "../src/interfaces/ISettlement.sol";

contract SmokeTest is Base {
    function test_settle_paysNodeAndSplits() public {
        _registerNode(node, "node-1");
        _deposit(payer, 100 ether);
        ISettlement.SignedReceipt memory s = _signed(PAYER_PK, NODE_PK, _receipt(payer, node, 1000, 2 ether));
        (uint256 settled, uint256 paid) = settlement.settle(_one(s));
        vm.assertEq(settled, 1, "settled");
        vm.assertEq(paid, 2 ether, "paid");
        vm.assertEq(settlement.earnings(node), 0.6 ether, "node part");
        vm.assertEq(token.balanceOf(address(vault)), 0.4 ether, "vault part");
    }
}
