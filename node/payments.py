"""Admission and billing of paid requests (DESIGN.md, The payment protocol).

`Payments` plugs into node.serving's three hooks:
- `admit(ctx)` before a request is queued: the signed RequestAuth (payer = signer, this node, this
  model, deadline, a nonce never seen, price cap), a countersigned receipt the payer carried, the
  per-payer rate limit, escrow coverage and the credit limit. A refusal is an ApiError in OpenAI's
  shape (401/402/403/429) that names the reason and the fix; those retrying cannot fix carry
  `x-should-retry: false`. The nonce (with a carried receipt, in one transaction) is stored durably
  before the request's first output; the write runs while the request waits for a slot.
- `finish(ctx, tokens)` after it answered: the request is billed (an item, written behind the
  answer: see `_bill`) and the node signs the payer's next cumulative receipt, returned as the
  answer's `llm_mesh` field.
- `release(ctx, tokens)` when it ended without an answer (client gone, worker lost): what was sent
  is billed all the same, without a receipt; the next receipt carries it.

Everything here reads memory: escrows come from chain.escrow's fold, prices from the served model's
registry entry. The exposure rules, per payer and this node, with E its spendable escrow:
owed = (countersigned - paid on chain) + unsigned + in-flight worst cases + this request's worst case
must stay within E and within `max_owed_fraction` x E; unsigned + in flight + this one within the
credit limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from eth_account.signers.local import LocalAccount

from chain.eip712 import Signature
from chain.escrow import EscrowView, PayerEscrow
from chain.logs import kv as _kv
from chain.pricing import request_cost
from chain.receipts import Domain, SignatureError, SignedReceipt, UsageReceipt
from chain.units import format_token
from node.config import PaymentSettings
from node.receipts import OPEN, ReceiptStore, StoredReceipt
from protocol.errors import ApiError
from protocol.payment import (
    AUTH_HEADER,
    RECEIPT_HEADER,
    RESPONSE_FIELD,
    Billing,
    Item,
    PaymentFormatError,
    SignedAuth,
    decode_auth,
    decode_signed_receipt,
)

if TYPE_CHECKING:
    from node.serving import RequestContext

log = logging.getLogger(__name__)
ZERO = "0x" + "00" * 20


def _log_failure(future: Future[Any]) -> None:
    if future.exception() is not None:
        log.error(_kv("payments.bill_write_failed", error=repr(future.exception())))


def _refuse(status: int, code: str, message: str, *, retry_after: float | None = None) -> ApiError:
    return ApiError(status, message, code=code, retry=retry_after is not None, retry_after=retry_after)


@dataclass
class Admitted:
    """What admission decided about one request (kept on its RequestContext)."""

    payer: str
    nonce: int
    model_id: int
    price: int
    worst: int
    durable: asyncio.Future[Any]  # the nonce's store write


@dataclass
class TokenBucket:
    rate: float
    burst: float
    level: float
    at: float

    def take(self, now: float) -> float:
        """0 when a request may go now, else the seconds until it may."""
        self.level = min(self.burst, self.level + (now - self.at) * self.rate)
        self.at = now
        if self.level >= 1:
            self.level -= 1
            return 0.0
        return (1 - self.level) / self.rate


@dataclass
class PayerAccount:
    """One payer at this node, in memory (the store holds the durable part)."""

    payer: str
    receipt: StoredReceipt | None = None  # the best countersigned receipt
    items: list[tuple[int, Item]] = field(default_factory=list)  # billed since it, oldest first
    next_seq: int = 1
    nonces: dict[int, int] = field(default_factory=dict)  # nonce -> deadline
    in_flight: dict[str, int] = field(default_factory=dict)  # request id -> worst-case cost
    bucket: TokenBucket | None = None
    last_signed: tuple[UsageReceipt, Signature] | None = None  # the receipt this node signed last

    @property
    def base(self) -> tuple[int, int]:
        r = self.receipt.signed.receipt if self.receipt is not None else None
        return (r.cumulative_tokens, r.cumulative_amount) if r is not None else (0, 0)

    @property
    def unsigned(self) -> int:
        return sum(item.amount for _, item in self.items)

    def unsettled(self, escrow: PayerEscrow | None) -> int:
        paid = escrow.paid_amount if escrow is not None else 0
        return max(0, self.base[1] - paid)


class Payments:
    """Admission, billing and countersigned receipts for one node account."""

    def __init__(
        self,
        account: LocalAccount,
        domain: Domain,
        escrow: EscrowView,
        store: ReceiptStore,
        settings: PaymentSettings,
        *,
        clock: Callable[[], float] = time.time,
        on_due: Callable[[str], None] = lambda payer: None,
    ) -> None:
        self.account, self.node = account, account.address
        self.domain, self.escrow, self.store, self.settings = domain, escrow, store, settings
        self.clock = clock
        self.on_due = on_due  # asks the settler to settle a payer soon
        self.credit_limit = settings.credit_limit_units()
        self.accounts: dict[str, PayerAccount] = {}
        self.receipts_stored = 0  # countersigned receipts stored since start
        store.bind_node(self.node)
        self._load()

    def _load(self) -> None:
        loaded = self.store.load()
        for payer in set(loaded.nonces) | set(loaded.items) | set(loaded.receipts):
            acct = self._account(payer)
            acct.nonces = loaded.nonces.get(payer, {})
            acct.items = loaded.items.get(payer, [])
            acct.next_seq = (acct.items[-1][0] + 1) if acct.items else 1
            acct.receipt = loaded.receipts.get(payer)
        log.info(_kv("payments.loaded", payers=len(self.accounts), receipts=len(loaded.receipts)))

    def _account(self, payer: str) -> PayerAccount:
        acct = self.accounts.get(payer)
        if acct is None:
            acct = self.accounts[payer] = PayerAccount(payer)
        return acct

    # ---------------------------------------------------------------- admission

    async def admit(self, ctx: RequestContext) -> asyncio.Future[Any]:
        """Admit or refuse; the returned future resolves once the nonce (and a carried receipt)
        is durable, which serving awaits before the request's first output."""
        signed = self._auth(ctx)
        auth = signed.auth
        acct = self._account(auth.payer)
        self._rate_limit(acct)
        carried = ctx.headers.get(RECEIPT_HEADER)
        taken = self._check_receipt(carried, payer=auth.payer)[1] if carried else None
        if auth.nonce in acct.nonces:
            raise _refuse(401, "nonce_reused", "this request auth's nonce was already used: sign a new auth")
        worst = request_cost(ctx.max_tokens, ctx.price_per_1k)
        if taken is not None:
            self._keep_receipt(acct, *taken)  # it counts for the exposure check below
        try:
            self._check_exposure(acct, worst)
        except ApiError:
            if taken is not None:  # refused, but the receipt is kept all the same
                await self.store.write(self.store.put_receipt(*taken))
            raise
        acct.nonces[auth.nonce] = auth.deadline
        acct.in_flight[ctx.request_id] = worst
        ops = [self.store.add_nonce(auth.payer, auth.nonce, auth.deadline)]
        if taken is not None:
            ops.append(self.store.put_receipt(*taken))
        # One transaction for both; the writer commits in submission order, so every later write
        # of this payer (its bill, a receipt) lands after this one.
        durable = asyncio.wrap_future(self.store.submit(self.store.together(ops)))
        ctx.payment = Admitted(auth.payer, auth.nonce, auth.model_id, ctx.price_per_1k, worst, durable)
        return durable

    def _auth(self, ctx: RequestContext) -> SignedAuth:
        raw = ctx.headers.get(AUTH_HEADER)
        if not raw:
            raise _refuse(
                401,
                "payment_required",
                f"this node serves paid requests: send a signed RequestAuth in the {AUTH_HEADER} header "
                "(the router and the SDK do this for you; see the README's payment protocol)",
            )
        try:
            signed = decode_auth(raw)
        except PaymentFormatError as exc:
            raise ApiError(400, str(exc), param=AUTH_HEADER, code="bad_auth", retry=False) from None
        self._check_domain(signed.chain_id, signed.settlement, "request auth")
        auth = signed.auth
        try:
            signer = auth.signer(signed.signature, self.domain)
        except SignatureError as exc:
            raise _refuse(401, "bad_signature", f"the request auth's signature is invalid: {exc}") from None
        if auth.payer == ZERO:
            raise _refuse(403, "zero_payer", "the zero address cannot pay: sign with your own account")
        if signer != auth.payer:
            raise _refuse(
                401,
                "bad_signature",
                f"the request auth is not signed by its payer {auth.payer} under this node's domain "
                f"({self.domain.describe()}): sign it with the payer's key for this chain and contract",
            )
        if auth.node != self.node:
            raise _refuse(
                403, "wrong_node", f"the request auth is for node {auth.node}; this node is {self.node}"
            )
        if auth.model_id != ctx.model_id:
            raise _refuse(
                403,
                "wrong_model",
                f"the request auth is for model id {auth.model_id}, but {ctx.model!r} is "
                f"model id {ctx.model_id}",
            )
        now = self.clock()
        if auth.deadline < now:
            raise _refuse(401, "auth_expired", f"the request auth expired at {auth.deadline}: sign a new one")
        if auth.deadline > now + self.settings.max_auth_ttl_s:
            raise _refuse(
                400,
                "deadline_too_far",
                f"the request auth's deadline is more than {self.settings.max_auth_ttl_s} s ahead: "
                "sign auths that expire sooner",
            )
        if ctx.max_tokens > auth.max_tokens:
            raise _refuse(
                403,
                "max_tokens_above_auth",
                f"the request asks for {ctx.max_tokens} tokens but its auth allows {auth.max_tokens}",
            )
        if ctx.price_per_1k > auth.max_price_per_1k:
            raise _refuse(
                402,
                "price_above_cap",
                f"{ctx.model!r} costs {format_token(ctx.price_per_1k)} per 1K tokens, above the auth's cap "
                f"of {format_token(auth.max_price_per_1k)}: raise max_price_per_1k or choose another model",
            )
        return signed

    def _check_domain(self, chain_id: int | None, settlement: str | None, what: str) -> None:
        other_chain = chain_id is not None and chain_id != self.domain.chain_id
        other_contract = settlement is not None and settlement.lower() != self.domain.settlement.lower()
        if other_chain or other_contract:
            raise _refuse(
                401,
                "wrong_chain",
                f"the {what} was signed for chain {chain_id}, Settlement {settlement}; this node settles on "
                f"{self.domain.describe()}: sign for that chain id and contract",
            )

    def _rate_limit(self, acct: PayerAccount) -> None:
        now = time.monotonic()
        s = self.settings
        if acct.bucket is None:
            acct.bucket = TokenBucket(s.rate_per_s, s.rate_burst, s.rate_burst, now)
        wait = acct.bucket.take(now)
        if wait:
            raise _refuse(
                429,
                "rate_limited",
                f"more than {s.rate_per_s:g} requests/s from this payer",
                retry_after=wait,
            )

    def _check_exposure(self, acct: PayerAccount, worst: int) -> None:
        escrow = self.escrow.payer(acct.payer)
        spendable = escrow.spendable if escrow is not None else 0
        if spendable == 0:
            raise _refuse(
                402,
                "no_escrow",
                f"payer {acct.payer} has no spendable escrow on {self.domain.describe()}: deposit with "
                "scripts/deposit.py (or cancel a pending unlock)",
            )
        in_flight = sum(acct.in_flight.values())
        unsigned = acct.unsigned + in_flight + worst
        owed = acct.unsettled(escrow) + unsigned
        if owed > spendable:
            raise _refuse(
                402,
                "insufficient_escrow",
                f"this request could cost {format_token(worst)}; with {format_token(owed - worst)} "
                f"already owed to this node, payer {acct.payer}'s spendable escrow of "
                f"{format_token(spendable)} does not cover it: deposit more, or ask for fewer max_tokens",
            )
        if unsigned > self.credit_limit:
            raise _refuse(
                402,
                "credit_limit",
                f"{format_token(unsigned - worst)} of usage is not countersigned yet (this node's credit "
                f"limit is {format_token(self.credit_limit)}): countersign the receipts you hold and "
                f"send them (POST /v1/receipts or the {RECEIPT_HEADER} header)",
            )
        cap = int(spendable * self.settings.max_owed_fraction)
        if owed > cap:
            self.on_due(acct.payer)
            raise _refuse(
                429,
                "settlement_pending",
                f"payer {acct.payer} owes this node {format_token(owed - worst)}, its cap is "
                f"{self.settings.max_owed_fraction:g} of the escrow ({format_token(cap)}); the node is "
                "settling: retry shortly",
                retry_after=min(30.0, self.settings.settle_interval_s),
            )
        if owed * 2 > cap:  # settle sooner as the unpaid amount grows
            self.on_due(acct.payer)

    # ---------------------------------------------------------------- billing

    async def finish(self, ctx: RequestContext, tokens: int) -> dict[str, object] | None:
        """Bill a finished request and sign the payer's next receipt (the answer's `llm_mesh`)."""
        admitted: Admitted | None = ctx.payment
        if admitted is None:
            return None
        acct = self._account(admitted.payer)
        await admitted.durable
        item = self._bill(acct, ctx, admitted, tokens)
        base_tokens, base_amount = acct.base
        receipt = UsageReceipt(
            payer=admitted.payer,
            node=self.node,
            model_id=admitted.model_id,
            cumulative_tokens=base_tokens + sum(i.tokens for _, i in acct.items),
            cumulative_amount=base_amount + acct.unsigned,
            expiry=int(self.clock()) + self.settings.receipt_ttl_s,
        )
        node_sig = receipt.sign(self.account, self.domain)
        acct.last_signed = (receipt, node_sig)
        billing = Billing(
            request=item,
            receipt=receipt,
            node_sig=node_sig,
            base=acct.receipt.signed if acct.receipt is not None else None,
            items=tuple(i for _, i in acct.items),
        )
        return {RESPONSE_FIELD: billing.encode()}

    async def release(self, ctx: RequestContext, tokens: int) -> None:
        """A request that ended without its answer: bill what was sent (no receipt)."""
        admitted: Admitted | None = ctx.payment
        if admitted is None:
            return
        acct = self._account(admitted.payer)
        try:
            await admitted.durable
        except Exception:  # the store failed; the request already failed with it
            log.exception(_kv("payments.admit_write_failed", payer=admitted.payer))
        if tokens:
            self._bill(acct, ctx, admitted, tokens)
        else:
            acct.in_flight.pop(ctx.request_id, None)
        ctx.payment = None

    def _bill(self, acct: PayerAccount, ctx: RequestContext, admitted: Admitted, tokens: int) -> Item:
        """Add the request's item. Its write is lazy (node.receipts) and not awaited: the item is
        this node's own claim, in a receipt this node signed, so kill -9 before it is durable can
        only forget the bills of the last LAZY_S, and not even those once the payer returns their
        countersigned receipt (the payer library does, with its next request). Nothing the node
        acknowledged depends on it; what a payer never countersigns is bounded by the credit limit
        either way."""
        item = Item(
            admitted.nonce, admitted.model_id, tokens, admitted.price, request_cost(tokens, admitted.price)
        )
        seq = acct.next_seq
        acct.next_seq += 1
        acct.items.append((seq, item))
        acct.in_flight.pop(ctx.request_id, None)
        ctx.payment = None  # billed once, whatever happens next
        op = self.store.add_item(acct.payer, seq, item)
        self.store.submit(op, lazy=True).add_done_callback(_log_failure)
        return item

    # ---------------------------------------------------------------- countersigned receipts

    async def take_receipt(self, raw: str | bytes | dict) -> StoredReceipt:
        """Check a countersigned receipt (POST /v1/receipts) and store it durably before the
        caller acknowledges it."""
        acct, taken = self._check_receipt(raw)
        if taken is None:
            assert acct.receipt is not None
            return acct.receipt  # already held (or an older one): acknowledged again
        await self.store.write(self.store.put_receipt(*taken))
        self._keep_receipt(acct, *taken)
        return taken[0]

    def _check_receipt(
        self, raw: str | bytes | dict, *, payer: str | None = None
    ) -> tuple[PayerAccount, tuple[StoredReceipt, int | None] | None]:
        """Check a countersigned receipt: its payer's account and the receipt to store with the
        last item seq it covers (None when this node holds it or a newer one already). ApiError
        400 when it is not good."""
        try:
            signed = decode_signed_receipt(raw)
        except PaymentFormatError as exc:
            raise ApiError(400, str(exc), param=RECEIPT_HEADER, code="bad_receipt", retry=False) from None
        r = signed.receipt
        if payer is not None and r.payer != payer:
            raise ApiError(
                400,
                f"the carried receipt is {r.payer}'s, not the auth's payer",
                code="bad_receipt",
                retry=False,
            )
        if r.node != self.node:
            raise ApiError(
                400,
                f"the receipt is for node {r.node}; this node is {self.node}",
                code="bad_receipt",
                retry=False,
            )
        acct = self._account(r.payer)
        if acct.last_signed != (r, signed.node_sig):  # else: the very receipt this node just signed
            self._check_signer(r, signed.node_sig, self.node, "node's (this node never signed it)")
        self._check_signer(r, signed.payer_sig, r.payer, "payer's")
        if acct.receipt is not None and r.cumulative_amount <= acct.base[1]:
            return acct, None
        return acct, (StoredReceipt(signed, OPEN, ""), self._covered(acct, r))

    def _keep_receipt(self, acct: PayerAccount, stored: StoredReceipt, covered: int | None) -> None:
        """The memory side of storing a receipt: it becomes the payer's base, its items go."""
        acct.receipt = stored
        self.receipts_stored += 1
        acct.items = [(seq, item) for seq, item in acct.items if covered is None or seq > covered]
        if log.isEnabledFor(logging.DEBUG):  # one per paid request: only when asked for
            r = stored.signed.receipt
            fields = {"payer": r.payer, "tokens": r.cumulative_tokens, "amount": r.cumulative_amount}
            log.debug(_kv("payments.receipt_stored", **fields))

    def _check_signer(self, r: UsageReceipt, sig: Signature, expected: str, whose: str) -> None:
        try:
            ok = r.signer(sig, self.domain) == expected
        except SignatureError:
            ok = False
        if not ok:
            raise ApiError(
                400,
                f"the receipt's {whose} signature does not verify under {self.domain.describe()} (a receipt "
                "signed for another chain id or Settlement contract reads like this)",
                code="bad_receipt",
                retry=False,
            )

    @staticmethod
    def _covered(acct: PayerAccount, r: UsageReceipt) -> int | None:
        """The last item seq the receipt covers (its cumulative amount reaches that far)."""
        amount = acct.base[1]
        covered = None
        for seq, item in acct.items:
            amount += item.amount
            if amount > r.cumulative_amount:
                break
            covered = seq
        return covered

    def prune_nonces(self, margin_s: int = 60) -> int:
        """Forget nonces whose auth expired (an expired auth is refused before its nonce is looked
        at, so they can never be replayed); returns how many went."""
        before = int(self.clock()) - margin_s
        dropped = 0
        for acct in self.accounts.values():
            old = [n for n, deadline in acct.nonces.items() if deadline < before]
            for nonce in old:
                del acct.nonces[nonce]
            dropped += len(old)
        if dropped:
            self.store.submit(self.store.prune_nonces(before))
        return dropped

    def best_receipts(self) -> dict[str, SignedReceipt]:
        """The settler's view: each payer's countersigned receipt that is still open."""
        return {
            p: a.receipt.signed
            for p, a in self.accounts.items()
            if a.receipt is not None and a.receipt.state == OPEN
        }

    def owed(self, payer: str) -> int:
        """Countersigned but unpaid + unsigned, for one payer (the status script and /metrics)."""
        acct = self.accounts.get(payer)
        return acct.unsettled(self.escrow.payer(payer)) + acct.unsigned if acct else 0


class PaymentGate:
    """What serving and the routes hold from the start: the daemon's Payments once the chain view
    is up (node.settler.PaymentService sets `target`); until then paid requests wait in line with
    a 503 that says the node is starting."""

    def __init__(self) -> None:
        self.target: Payments | None = None

    def _payments(self) -> Payments:
        if self.target is None:
            raise ApiError(
                503, "the node is starting (connecting to the chain); retry shortly", code="starting"
            )
        return self.target

    async def admit(self, ctx: RequestContext) -> asyncio.Future[Any]:
        return await self._payments().admit(ctx)

    async def finish(self, ctx: RequestContext, tokens: int) -> dict[str, object] | None:
        return await self._payments().finish(ctx, tokens) if ctx.payment is not None else None

    async def release(self, ctx: RequestContext, tokens: int) -> None:
        if ctx.payment is not None and self.target is not None:
            await self.target.release(ctx, tokens)

    async def take_receipt(self, raw: str | bytes | dict) -> StoredReceipt:
        return await self._payments().take_receipt(raw)
