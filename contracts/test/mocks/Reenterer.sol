// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {ITransferHook} from "./ReentrantToken.sol";

/// @notice An attacker account that acts (as payer, node operator or earnings recipient) through
///         `exec`, and, once armed, makes one reentrant call from inside the token's transfer hook.
///         It records the outcome of that call instead of bubbling it, so the outer call completes
///         and the test can check both the reentrant error and the outer effect.
contract Reenterer is ITransferHook {
    address public target;
    bytes public payload;
    bool public armed;

    bool public attempted;
    bool public succeeded;
    bytes public returnData;

    /// @notice Arms one reentrant call of `payload` on `target` at the next token transfer.
    function arm(address target_, bytes calldata payload_) external {
        target = target_;
        payload = payload_;
        armed = true;
    }

    /// @inheritdoc ITransferHook
    function onTokenTransfer(address, address, uint256) external {
        if (!armed) return;
        armed = false;
        attempted = true;
        (succeeded, returnData) = target.call(payload);
    }

    /// @notice Calls `target` as this account, bubbling any revert.
    function exec(address target_, bytes calldata data) external returns (bytes memory ret) {
        bool ok;
        (ok, ret) = target_.call(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(ret, 32), mload(ret))
            }
        }
    }
}
