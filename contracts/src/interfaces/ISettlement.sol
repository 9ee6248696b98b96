// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

/// @title ISettlement
/// @notice User escrow and the settlement of signed, cumulative usage receipts, with the fixed
///         30/25/20/15/10 split of every payment.
interface ISettlement {
    /// @notice What a payer owes a node in total, signed by the payer (EIP-712). Cumulative per
    ///         payer/node pair, so only the newest receipt matters and a replay pays nothing.
    struct UsageReceipt {
        address payer;
        address node;
        uint256 modelId;
        uint256 cumulativeTokens;
        uint256 cumulativeAmount;
        uint256 expiry;
    }

    /// @notice A payer's authorisation of one request, checked off-chain by the node (EIP-712,
    ///         same domain as receipts) so nobody can spend another payer's escrow.
    struct RequestAuth {
        address payer;
        address node;
        uint256 modelId;
        uint256 maxTokens;
        uint256 maxPricePer1k;
        uint256 nonce;
        uint256 deadline;
    }

    /// @notice An ECDSA signature (low-s enforced on recovery).
    struct Signature {
        uint8 v;
        bytes32 r;
        bytes32 s;
    }

    /// @notice A receipt with the payer's signature and, unless the node itself submits it, the
    ///         node's signature over the same receipt.
    struct SignedReceipt {
        UsageReceipt receipt;
        Signature payerSig;
        Signature nodeSig;
    }

    /// @notice A payer's escrow. `unlocking` is the part the payer asked to withdraw; it stays
    ///         spendable by settlement until withdrawn, which is what lets nodes settle first. It
    ///         can be withdrawn only from `unlockReadyAt` for UNLOCK_WINDOW; after that the unlock
    ///         has lapsed (it no longer reserves anything) and a new request is needed.
    struct Escrow {
        uint128 balance;
        uint128 unlocking;
        uint64 unlockReadyAt;
    }

    /// @notice What was already paid on a payer/node pair.
    struct Channel {
        uint128 amount;
        uint128 tokens;
    }

    /// @notice One payment's parts; they always sum exactly to the payment.
    struct Split {
        uint256 node;
        uint256 developers;
        uint256 hysa;
        uint256 infrastructure;
        uint256 research;
    }

    /// @notice Where the developers', infrastructure and R&D parts of every payment go. The vault's
    ///         part goes to the HYSA vault, fixed at deployment.
    struct Treasury {
        address developers;
        address infrastructure;
        address research;
    }

    /// @notice The amount must be greater than zero.
    error ZeroAmount();
    /// @notice The address must not be zero.
    error ZeroAddress();
    /// @notice The payer's escrow cannot cover the payment; nothing was paid.
    error InsufficientEscrow(address payer, uint256 needed, uint256 available);
    /// @notice The receipt expired before it was settled (valid through `expiry` inclusive).
    error ReceiptExpired(uint256 expiry, uint256 nowTimestamp);
    /// @notice The payer's signature does not recover to the payer (or is malleable).
    error InvalidPayerSignature(address payer);
    /// @notice The node's signature does not recover to the node, and the node did not submit.
    error InvalidNodeSignature(address node);
    /// @notice The receipt does not raise the amount already paid on this pair.
    error StaleReceipt(address payer, address node, uint256 cumulativeAmount, uint256 alreadyPaid);
    /// @notice The receipt's token count is below what was already settled, or out of range.
    error InconsistentTokens(address payer, address node, uint256 cumulativeTokens, uint256 alreadyCounted);
    /// @notice The receipt's amount is out of range.
    error AmountOutOfRange(uint256 cumulativeAmount);
    /// @notice The node may not be paid: it never registered, left more than one unbonding period
    ///         ago, or has no stake left (active or unbonding) to answer for its work.
    error NodeNotPayable(address node);
    /// @notice The receipt's model was never approved by a curator, so it has no billable price.
    error ModelNotBillable(uint256 modelId);
    /// @notice Crediting this receipt would overflow the node's reputation counters.
    error ReputationOverflow(address node);
    /// @notice The unlock was not withdrawn within its window after it matured; request a new one.
    error UnlockLapsed(uint256 readyAt, uint256 lapsedAt, uint256 nowTimestamp);
    /// @notice The request authorisation's signature is malformed, malleable or recovers to nobody.
    error InvalidRequestSignature();
    /// @notice The payer has no unlock in progress.
    error NoUnlockPending(address payer);
    /// @notice The unlock delay has not passed yet.
    error UnlockNotReady(uint256 readyAt, uint256 nowTimestamp);
    /// @notice The account has no earnings to withdraw.
    error NothingToWithdraw(address account);
    /// @notice A parameter is outside its allowed range.
    error ParameterOutOfBounds(string name, uint256 value, uint256 minimum, uint256 maximum);

    /// @notice Tokens entered a payer's escrow.
    event EscrowDeposited(address indexed payer, address indexed from, uint256 amount, uint256 balance);
    /// @notice A payer asked to withdraw; nodes should settle this payer's receipts before `readyAt`.
    event EscrowUnlockRequested(address indexed payer, uint256 amount, uint64 readyAt);
    /// @notice A payer cancelled its unlock.
    event EscrowUnlockCancelled(address indexed payer);
    /// @notice Tokens left a payer's escrow.
    event EscrowWithdrawn(address indexed payer, uint256 amount);
    /// @notice A receipt was paid: `amount` (for `tokens` tokens) moved out of the payer's escrow.
    event ReceiptSettled(
        address indexed payer, address indexed node, uint256 indexed modelId, uint256 tokens, uint256 amount
    );
    /// @notice A receipt in a batch was skipped; `reason` is the ABI-encoded custom error.
    event ReceiptRejected(address indexed payer, address indexed node, uint256 index, bytes reason);
    /// @notice A node's payments in one batch were split.
    event PaymentSplit(
        address indexed node,
        uint256 amount,
        uint256 nodePart,
        uint256 developers,
        uint256 hysa,
        uint256 infrastructure,
        uint256 research
    );
    /// @notice An account withdrew its earnings.
    event EarningsWithdrawn(address indexed account, uint256 amount);
    /// @notice The treasury recipients changed.
    event TreasuryChanged(address indexed developers, address indexed infrastructure, address indexed research);
    /// @notice The escrow unlock delay changed.
    event UnlockDelayChanged(uint256 oldValue, uint256 newValue);

    /// @notice Deposits into the caller's escrow (needs an ERC-20 allowance).
    /// @param amount Tokens to deposit.
    function deposit(uint256 amount) external;

    /// @notice Deposits into another payer's escrow; it never touches their unlock.
    /// @param payer Whose escrow to fund.
    /// @param amount Tokens to deposit.
    function depositFor(address payer, uint256 amount) external;

    /// @notice Approves with an EIP-2612 permit and deposits, in one transaction.
    /// @param amount Tokens to deposit.
    /// @param deadline The permit's deadline.
    /// @param v Permit signature v.
    /// @param r Permit signature r.
    /// @param s Permit signature s.
    function depositWithPermit(uint256 amount, uint256 deadline, uint8 v, bytes32 r, bytes32 s) external;

    /// @notice Starts (or restarts) an unlock of part of the caller's escrow. The ready time is one
    ///         unlock delay away, and never earlier than that of an unlock still pending.
    /// @param amount Tokens to unlock; replaces any unlock in progress.
    function requestUnlock(uint256 amount) external;

    /// @notice Cancels the caller's unlock.
    function cancelUnlock() external;

    /// @notice Withdraws the caller's unlocked escrow (what settlement left of it), from the ready
    ///         time until UNLOCK_WINDOW after it; later the unlock has lapsed.
    /// @return amount Tokens withdrawn.
    function withdraw() external returns (uint256 amount);

    /// @notice Settles receipts, skipping bad ones with a ReceiptRejected event.
    /// @param batch Signed receipts; consecutive receipts of one node share one split and one
    ///        reputation update, so nodes should submit theirs together.
    /// @return settled How many receipts paid something.
    /// @return totalPaid The sum paid.
    function settle(SignedReceipt[] calldata batch) external returns (uint256 settled, uint256 totalPaid);

    /// @notice Settles receipts all or nothing: the first bad receipt reverts with its custom error.
    ///         Anyone can grief it by settling one of its receipts first; nodes use `settle`.
    /// @param batch Signed receipts.
    /// @return totalPaid The sum paid.
    function settleStrict(SignedReceipt[] calldata batch) external returns (uint256 totalPaid);

    /// @notice Withdraws the caller's earnings (node operators and treasury recipients).
    /// @return amount Tokens withdrawn.
    function withdrawEarnings() external returns (uint256 amount);

    /// @notice The EIP-712 digest of a receipt, as signed by payer and node.
    /// @param receipt The receipt.
    /// @return The digest.
    function hashReceipt(UsageReceipt calldata receipt) external view returns (bytes32);

    /// @notice The EIP-712 digest of a request authorisation.
    /// @param auth The authorisation.
    /// @return The digest.
    function hashRequestAuth(RequestAuth calldata auth) external view returns (bytes32);

    /// @notice Who signed a request authorisation; reverts with InvalidRequestSignature for a bad
    ///         signature and ZeroAddress for a zero payer, so `signer == auth.payer` is a safe check.
    /// @param auth The authorisation.
    /// @param sig The signature.
    /// @return The signer (never the zero address).
    function recoverRequestSigner(RequestAuth calldata auth, Signature calldata sig) external view returns (address);

    /// @notice Splits a payment 30/25/20/15/10; the research part takes the rounding remainder.
    /// @param amount The payment.
    /// @return The parts.
    function split(uint256 amount) external pure returns (Split memory);

    /// @notice A payer's escrow.
    /// @param payer The payer.
    /// @return The escrow.
    function escrowOf(address payer) external view returns (Escrow memory);

    /// @notice What settlement can still take from a payer's escrow for new work: the balance less
    ///         an unlock that is pending or withdrawable (a lapsed unlock reserves nothing).
    /// @param payer The payer.
    /// @return The amount a node may count on.
    function availableOf(address payer) external view returns (uint256);

    /// @notice What a payer already paid a node.
    /// @param payer The payer.
    /// @param node The node.
    /// @return The channel.
    function channelOf(address payer, address node) external view returns (Channel memory);
}
