// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {ISettlement} from "./interfaces/ISettlement.sol";
import {INodeRegistry} from "./interfaces/INodeRegistry.sol";
import {IModelRegistry} from "./interfaces/IModelRegistry.sol";
import {IHysaVault} from "./interfaces/IHysaVault.sol";

/// @title Settlement
/// @notice Holds user escrow and pays nodes from it against cumulative usage receipts signed by the
///         payer. Every payment is split 30% node / 25% developers / 20% HYSA vault / 15%
///         infrastructure / 10% research. The vault's part is transferred at once and vests into
///         the vault's share price over a week; the other parts accrue as earnings withdrawn by
///         their owners.
/// @dev Batch policy: `settle` skips a bad receipt with a ReceiptRejected event carrying the custom
///      error, so one underfunded payer cannot block a node's other payers; the node keeps the
///      receipt and retries it. `settleStrict` reverts the whole batch on the first bad receipt.
contract Settlement is ISettlement, AccessControl, ReentrancyGuard, EIP712 {
    using SafeERC20 for IERC20;
    using SafeCast for uint256;

    bytes32 public constant USAGE_RECEIPT_TYPEHASH = keccak256(
        "UsageReceipt(address payer,address node,uint256 modelId,uint256 cumulativeTokens,uint256 cumulativeAmount,uint256 expiry)"
    );
    bytes32 public constant REQUEST_AUTH_TYPEHASH = keccak256(
        "RequestAuth(address payer,address node,uint256 modelId,uint256 maxTokens,uint256 maxPricePer1k,uint256 nonce,uint256 deadline)"
    );

    uint256 public constant BPS = 10_000;
    uint256 public constant NODE_BPS = 3000;
    uint256 public constant DEVELOPERS_BPS = 2500;
    uint256 public constant HYSA_BPS = 2000;
    uint256 public constant INFRASTRUCTURE_BPS = 1500;
    uint256 public constant RESEARCH_BPS = 1000;

    uint256 public constant MIN_UNLOCK_DELAY = 10 minutes;
    uint256 public constant MAX_UNLOCK_DELAY = 30 days;
    /// @notice How long a matured unlock stays withdrawable. Bounding it means a node always sees
    ///         an unlock coming at least `unlockDelay` ahead: no payer can keep a matured unlock
    ///         in reserve and withdraw with zero notice after being served.
    uint256 public constant UNLOCK_WINDOW = 1 days;
    /// @dev Price unit: prices are per 1K tokens.
    uint256 private constant TOKENS_PER_PRICE = 1000;

    IERC20 public immutable token;
    INodeRegistry public immutable nodes;
    IModelRegistry public immutable models;
    /// @notice The HYSA vault, fixed: the registry's slash recipient.
    address public immutable hysaVault;

    Treasury private _treasury;
    uint256 public unlockDelay;

    mapping(address payer => Escrow) private _escrows;
    mapping(address payer => mapping(address node => Channel)) private _channels;
    /// @notice Unwithdrawn earnings of node operators and treasury recipients.
    mapping(address account => uint256) public earnings;

    /// @dev One node's consecutive receipts within a batch. The run's totals are kept as the room
    ///      its reputation counters have left (what it started with minus what the run added), so
    ///      each receipt costs one comparison and one subtraction per counter. The last model price
    ///      looked up is kept across runs.
    struct Run {
        address node;
        bool payable_;
        uint256 receipts;
        uint256 tokensRoomAtStart;
        uint256 tokensRoom;
        uint256 volumeRoomAtStart;
        uint256 volumeRoom;
        uint256 modelId;
        uint256 price;
    }

    /// @param token_ The payment token.
    /// @param nodes_ The node registry (this contract needs its SETTLEMENT_ROLE); its model registry
    ///        prices receipts and its slash recipient is the HYSA vault.
    /// @param admin Receives the admin role.
    /// @param treasury_ Recipients of the developers', infrastructure and R&D parts.
    /// @param unlockDelay_ Seconds between an escrow unlock request and the withdrawal.
    constructor(IERC20 token_, INodeRegistry nodes_, address admin, Treasury memory treasury_, uint256 unlockDelay_)
        EIP712("llm-mesh Settlement", "1")
    {
        token = token_;
        nodes = nodes_;
        models = nodes_.models();
        hysaVault = nodes_.slashRecipient();
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _setTreasury(treasury_);
        _setUnlockDelay(unlockDelay_);
    }

    // ---------------------------------------------------------------- escrow

    /// @inheritdoc ISettlement
    function deposit(uint256 amount) external nonReentrant {
        _deposit(msg.sender, amount);
    }

    /// @inheritdoc ISettlement
    function depositFor(address payer, uint256 amount) external nonReentrant {
        if (payer == address(0)) revert ZeroAddress();
        _deposit(payer, amount);
    }

    /// @inheritdoc ISettlement
    function depositWithPermit(uint256 amount, uint256 deadline, uint8 v, bytes32 r, bytes32 s) external nonReentrant {
        // A permit seen in the mempool can be front-run; the allowance it set is then already
        // there, so a failed permit is not an error as long as transferFrom succeeds.
        try IERC20Permit(address(token)).permit(msg.sender, address(this), amount, deadline, v, r, s) {} catch {}
        _deposit(msg.sender, amount);
    }

    /// @inheritdoc ISettlement
    function requestUnlock(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        Escrow storage e = _escrows[msg.sender];
        if (amount > e.balance) revert InsufficientEscrow(msg.sender, amount, e.balance);
        e.unlocking = amount.toUint128();
        // Never closer than a pending unlock's ready time: after the admin lowered the delay, a
        // new request must not shorten the notice nodes were given.
        uint256 readyAt = block.timestamp + unlockDelay;
        if (readyAt > e.unlockReadyAt) e.unlockReadyAt = readyAt.toUint64();
        emit EscrowUnlockRequested(msg.sender, amount, e.unlockReadyAt);
    }

    /// @inheritdoc ISettlement
    function cancelUnlock() external {
        Escrow storage e = _escrows[msg.sender];
        if (e.unlockReadyAt == 0) revert NoUnlockPending(msg.sender);
        e.unlocking = 0;
        e.unlockReadyAt = 0;
        emit EscrowUnlockCancelled(msg.sender);
    }

    /// @inheritdoc ISettlement
    function withdraw() external nonReentrant returns (uint256 amount) {
        Escrow storage e = _escrows[msg.sender];
        if (e.unlockReadyAt == 0) revert NoUnlockPending(msg.sender);
        if (block.timestamp < e.unlockReadyAt) revert UnlockNotReady(e.unlockReadyAt, block.timestamp);
        uint256 lapsedAt = e.unlockReadyAt + UNLOCK_WINDOW;
        if (block.timestamp > lapsedAt) revert UnlockLapsed(e.unlockReadyAt, lapsedAt, block.timestamp);
        // Settlement may have spent part of the unlocking amount during the delay.
        amount = e.unlocking < e.balance ? e.unlocking : e.balance;
        // forge-lint: disable-next-line(unsafe-typecast)
        e.balance -= uint128(amount); // amount <= e.balance, a uint128
        e.unlocking = 0;
        e.unlockReadyAt = 0;
        emit EscrowWithdrawn(msg.sender, amount);
        if (amount != 0) token.safeTransfer(msg.sender, amount);
    }

    // ---------------------------------------------------------------- settlement

    /// @inheritdoc ISettlement
    function settle(SignedReceipt[] calldata batch) external nonReentrant returns (uint256 settled, uint256 totalPaid) {
        return _settle(batch, false);
    }

    /// @inheritdoc ISettlement
    function settleStrict(SignedReceipt[] calldata batch) external nonReentrant returns (uint256 totalPaid) {
        (, totalPaid) = _settle(batch, true);
    }

    /// @inheritdoc ISettlement
    function withdrawEarnings() external nonReentrant returns (uint256 amount) {
        amount = earnings[msg.sender];
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        earnings[msg.sender] = 0;
        emit EarningsWithdrawn(msg.sender, amount);
        token.safeTransfer(msg.sender, amount);
    }

    // ---------------------------------------------------------------- admin

    /// @notice Sets the developers', infrastructure and R&D recipients (admin); the vault stays.
    /// @param treasury_ The new recipients; none may be zero.
    function setTreasury(Treasury calldata treasury_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setTreasury(treasury_);
    }

    /// @notice Sets the escrow unlock delay (admin); unlocks already requested keep their time.
    /// @param value Seconds.
    function setUnlockDelay(uint256 value) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setUnlockDelay(value);
    }

    // ---------------------------------------------------------------- views

    /// @inheritdoc ISettlement
    function hashReceipt(UsageReceipt calldata receipt) public view returns (bytes32 digest) {
        bytes32 typeHash = USAGE_RECEIPT_TYPEHASH;
        bytes32 structHash;
        // hashStruct = keccak256(typeHash || the six static fields). The fields are copied straight
        // from calldata into scratch memory above the free pointer (never allocated), because
        // settle hashes every receipt of a batch and allocating would grow memory per receipt.
        // Every field is a full word in the ABI encoding, so the copy is exactly abi.encode's.
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, typeHash)
            calldatacopy(add(ptr, 0x20), receipt, 0xc0)
            structHash := keccak256(ptr, 0xe0)
        }
        digest = _hashTypedDataV4(structHash);
    }

    /// @inheritdoc ISettlement
    function hashRequestAuth(RequestAuth calldata auth) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    REQUEST_AUTH_TYPEHASH,
                    auth.payer,
                    auth.node,
                    auth.modelId,
                    auth.maxTokens,
                    auth.maxPricePer1k,
                    auth.nonce,
                    auth.deadline
                )
            )
        );
    }

    /// @inheritdoc ISettlement
    function recoverRequestSigner(RequestAuth calldata auth, Signature calldata sig) external view returns (address) {
        if (auth.payer == address(0)) revert ZeroAddress();
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(hashRequestAuth(auth), sig.v, sig.r, sig.s);
        if (err != ECDSA.RecoverError.NoError) revert InvalidRequestSignature();
        return signer;
    }

    /// @inheritdoc ISettlement
    function split(uint256 amount) public pure returns (Split memory parts) {
        // mulDiv keeps the public view exact for any uint256, not just amounts settlement can reach.
        parts.node = Math.mulDiv(amount, NODE_BPS, BPS);
        parts.developers = Math.mulDiv(amount, DEVELOPERS_BPS, BPS);
        parts.hysa = Math.mulDiv(amount, HYSA_BPS, BPS);
        parts.infrastructure = Math.mulDiv(amount, INFRASTRUCTURE_BPS, BPS);
        parts.research = amount - parts.node - parts.developers - parts.hysa - parts.infrastructure;
    }

    /// @inheritdoc ISettlement
    function escrowOf(address payer) external view returns (Escrow memory) {
        return _escrows[payer];
    }

    /// @inheritdoc ISettlement
    function availableOf(address payer) external view returns (uint256) {
        Escrow storage e = _escrows[payer];
        bool reserved = e.unlockReadyAt != 0 && block.timestamp <= e.unlockReadyAt + UNLOCK_WINDOW;
        return reserved ? e.balance - Math.min(e.unlocking, e.balance) : e.balance;
    }

    /// @inheritdoc ISettlement
    function channelOf(address payer, address node) external view returns (Channel memory) {
        return _channels[payer][node];
    }

    /// @notice The treasury recipients.
    /// @return The recipients.
    function treasury() external view returns (Treasury memory) {
        return _treasury;
    }

    // ---------------------------------------------------------------- internals

    function _deposit(address payer, uint256 amount) private {
        if (amount == 0) revert ZeroAmount();
        Escrow storage e = _escrows[payer];
        e.balance = (uint256(e.balance) + amount).toUint128();
        emit EscrowDeposited(payer, msg.sender, amount, e.balance);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    function _settle(SignedReceipt[] calldata batch, bool strict) private returns (uint256 settled, uint256 totalPaid) {
        Run memory run;
        Split memory owed; // treasury parts of the whole batch
        for (uint256 i; i < batch.length; ++i) {
            SignedReceipt calldata signed = batch[i];
            address node = signed.receipt.node;
            if (node != run.node || i == 0) {
                _closeRun(run, owed);
                run.node = node;
                (run.payable_, run.tokensRoom, run.volumeRoom) = nodes.settlementCapacity(node);
                (run.tokensRoomAtStart, run.volumeRoomAtStart) = (run.tokensRoom, run.volumeRoom);
            }
            (bytes memory err, uint256 amount) = _apply(signed, run);
            if (err.length != 0) {
                if (strict) {
                    assembly ("memory-safe") {
                        revert(add(err, 32), mload(err))
                    }
                }
                emit ReceiptRejected(signed.receipt.payer, node, i, err);
                continue;
            }
            // Each amount is below 2^128 (checked in _apply), so sums over a batch cannot overflow.
            unchecked {
                totalPaid += amount;
                ++settled;
            }
        }
        _closeRun(run, owed);
        _payTreasury(owed);
    }

    /// @dev Checks one receipt and, when it is good, moves its delta out of escrow and adds it to
    ///      the run. A bad receipt returns its ABI-encoded custom error instead of reverting so a
    ///      batch can skip it.
    function _apply(SignedReceipt calldata signed, Run memory run) private returns (bytes memory err, uint256 amount) {
        UsageReceipt calldata r = signed.receipt;
        if (!run.payable_) return (abi.encodeWithSelector(NodeNotPayable.selector, r.node), 0);
        if (block.timestamp > r.expiry) {
            return (abi.encodeWithSelector(ReceiptExpired.selector, r.expiry, block.timestamp), 0);
        }
        if (r.cumulativeAmount > type(uint128).max) {
            return (abi.encodeWithSelector(AmountOutOfRange.selector, r.cumulativeAmount), 0);
        }
        if (r.modelId != run.modelId) (run.modelId, run.price) = (r.modelId, models.billablePrice(r.modelId));
        if (run.price == 0) return (abi.encodeWithSelector(ModelNotBillable.selector, r.modelId), 0);
        bytes32 digest = hashReceipt(r);
        if (!_signedBy(digest, signed.payerSig, r.payer)) {
            return (abi.encodeWithSelector(InvalidPayerSignature.selector, r.payer), 0);
        }
        if (msg.sender != r.node && !_signedBy(digest, signed.nodeSig, r.node)) {
            return (abi.encodeWithSelector(InvalidNodeSignature.selector, r.node), 0);
        }
        Channel storage channel = _channels[r.payer][r.node];
        (uint256 paidAmount, uint256 paidTokens) = (channel.amount, channel.tokens);
        if (r.cumulativeAmount <= paidAmount) {
            return (abi.encodeWithSelector(StaleReceipt.selector, r.payer, r.node, r.cumulativeAmount, paidAmount), 0);
        }
        if (r.cumulativeTokens < paidTokens || r.cumulativeTokens > type(uint128).max) {
            return
                (
                    abi.encodeWithSelector(
                        InconsistentTokens.selector, r.payer, r.node, r.cumulativeTokens, paidTokens
                    ),
                    0
                );
        }
        // Unchecked arithmetic in this function follows the check that rules out its overflow (here:
        // cumulativeAmount > paidAmount), because settle runs it for every receipt.
        unchecked {
            amount = r.cumulativeAmount - paidAmount;
        }
        Escrow storage escrow = _escrows[r.payer];
        uint256 available = escrow.balance;
        if (amount > available) {
            return (abi.encodeWithSelector(InsufficientEscrow.selector, r.payer, amount, available), 0);
        }
        uint256 tokens;
        uint256 credited;
        unchecked {
            tokens = r.cumulativeTokens - paidTokens; // checked above: not below paidTokens
            // Reputation counts only tokens the payment pays for at the model's approved price, so
            // a node paying itself dust cannot claim any number of tokens served. amount < 2^128.
            uint256 paidFor = amount * TOKENS_PER_PRICE / run.price;
            credited = tokens < paidFor ? tokens : paidFor;
        }
        // Both counters must still fit after this run, or recordSettlement would revert the batch.
        if (credited > run.tokensRoom || amount > run.volumeRoom) {
            return (abi.encodeWithSelector(ReputationOverflow.selector, r.node), 0);
        }
        unchecked {
            run.tokensRoom -= credited;
            run.volumeRoom -= amount;
            if (amount >= run.price) ++run.receipts; // paid for at least 1K tokens
        }
        // All three fit in 128 bits: the receipt's values were range-checked above, and the new
        // balance is below the old one.
        // forge-lint: disable-next-line(unsafe-typecast)
        channel.amount = uint128(r.cumulativeAmount);
        // forge-lint: disable-next-line(unsafe-typecast)
        channel.tokens = uint128(r.cumulativeTokens);
        unchecked {
            // forge-lint: disable-next-line(unsafe-typecast)
            escrow.balance = uint128(available - amount); // amount <= available, checked above
        }
        emit ReceiptSettled(r.payer, r.node, r.modelId, tokens, amount);
    }

    /// @dev Splits one node's run, credits the node and its reputation, and adds the treasury
    ///      parts to the batch totals.
    function _closeRun(Run memory run, Split memory owed) private {
        uint256 amount = run.volumeRoomAtStart - run.volumeRoom;
        if (amount == 0) return;
        Split memory parts = split(amount);
        earnings[run.node] += parts.node;
        owed.developers += parts.developers;
        owed.hysa += parts.hysa;
        owed.infrastructure += parts.infrastructure;
        owed.research += parts.research;
        emit PaymentSplit(
            run.node, amount, parts.node, parts.developers, parts.hysa, parts.infrastructure, parts.research
        );
        nodes.recordSettlement(run.node, run.tokensRoomAtStart - run.tokensRoom, amount, run.receipts);
        // The next run starts from its node's capacity; only the receipt count carries over.
        run.receipts = 0;
    }

    function _payTreasury(Split memory owed) private {
        if (owed.developers != 0) earnings[_treasury.developers] += owed.developers;
        if (owed.infrastructure != 0) earnings[_treasury.infrastructure] += owed.infrastructure;
        if (owed.research != 0) earnings[_treasury.research] += owed.research;
        // Transferred, not credited: assets arriving without new shares raise every holder's price,
        // vesting from this sync on.
        if (owed.hysa != 0) {
            token.safeTransfer(hysaVault, owed.hysa);
            IHysaVault(hysaVault).sync();
        }
    }

    function _signedBy(bytes32 digest, Signature calldata sig, address expected) private pure returns (bool) {
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, sig.v, sig.r, sig.s);
        return err == ECDSA.RecoverError.NoError && signer == expected;
    }

    function _setTreasury(Treasury memory value) private {
        if (value.developers == address(0) || value.infrastructure == address(0) || value.research == address(0)) {
            revert ZeroAddress();
        }
        _treasury = value;
        emit TreasuryChanged(value.developers, value.infrastructure, value.research);
    }

    function _setUnlockDelay(uint256 value) private {
        if (value < MIN_UNLOCK_DELAY || value > MAX_UNLOCK_DELAY) {
            revert ParameterOutOfBounds("unlockDelay", value, MIN_UNLOCK_DELAY, MAX_UNLOCK_DELAY);
        }
        emit UnlockDelayChanged(unlockDelay, value);
        unlockDelay = value;
    }
}
