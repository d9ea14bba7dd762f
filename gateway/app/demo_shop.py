"""The Kettle & Crane demo shop: a small API of orders, deliveries, subscriptions and returns,
for the sample tools and procedures in `config/gateway.yaml` (`demo.shop: true` serves it
under `/demo/shop/api`). Not part of the gateway: nothing outside `gateway/app/` imports it.

Every customer resource is reached with the customer's verified identity (`email`, `phone` or
`user`, which the gateway injects) or with the resource's number and the delivery postcode, as
a shop without logins would accept. A wrong pair answers 404, as an unknown number does, so
neither tells a guesser which part was wrong. Change requests honour `Idempotency-Key`: the
same key gets the first response again, and the change is made once. Dates are seeded
relative to today, so the 30-day return window always has an order on each side of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from aiohttp import web
from yarl import URL

from brain.tools import ConnectionConfig

RETURN_WINDOW_DAYS = 30
PREFIX = "/demo/shop/api"
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass
class Customer:
    name: str
    email: str
    phone: str
    user: str  # the web chat site's user id
    postcode: str
    address: str


@dataclass
class Order:
    id: str
    customer: Customer
    items: list[str]
    status: str  # processing (not dispatched), dispatched, delivered
    placed: date
    delivered: date | None = None
    eta: date | None = None
    carrier: str | None = None
    tracking: str | None = None
    address: str = ""


@dataclass
class Subscription:
    id: str
    customer: Customer
    plan: str
    next_delivery: date
    status: str = "active"  # active, paused
    paused_until: date | None = None


@dataclass
class Shop:
    """The shop's state; tests read `actions` (every change made) and `requested` (every change
    asked for) and `peak_calls` (the most calls in flight at once), and set `outage`, `delay`
    and `latency`."""

    customers: list[Customer]
    orders: dict[str, Order]
    subscriptions: dict[str, Subscription]
    returns: dict[str, dict[str, Any]] = field(default_factory=dict)
    actions: list[tuple[str, str]] = field(default_factory=list)  # (action, resource id)
    requested: list[str | None] = field(default_factory=list)  # each change's Idempotency-Key
    outage: bool = False  # every call answers 503
    delay: float = 0.0  # seconds each change waits before it is made
    latency: float = 0.0  # seconds every call takes before it is handled (a slow API)
    peak_calls: int = 0
    _in_flight: int = 0
    _replies: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._outages])
        app.add_routes(
            [
                web.get("/orders", self._list_orders),
                web.get("/orders/{id}", self._get_order),
                web.post("/orders/{id}/address", self._change_address),
                web.post("/returns", self._start_return),
                web.get("/subscriptions", self._list_subscriptions),
                web.get("/subscriptions/{id}", self._get_subscription),
                web.post("/subscriptions/{id}/skip", self._skip),
                web.post("/subscriptions/{id}/pause", self._pause),
            ]
        )
        return app

    @web.middleware
    async def _outages(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self._in_flight += 1
        self.peak_calls = max(self.peak_calls, self._in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            if self.outage:
                return web.json_response({"error": "service unavailable"}, status=503)
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            self._in_flight -= 1

    # --- reads ----------------------------------------------------------------------------

    async def _list_orders(self, request: web.Request) -> web.Response:
        customer = self._customer(request.query)
        if customer is None:
            raise _not_found("customer")
        orders = sorted(
            (o for o in self.orders.values() if o.customer is customer),
            key=lambda o: o.placed,
            reverse=True,
        )
        return web.json_response({"orders": [_order(o) for o in orders]})

    async def _get_order(self, request: web.Request) -> web.Response:
        return web.json_response(_order(self._order(request.match_info["id"], request.query)))

    async def _list_subscriptions(self, request: web.Request) -> web.Response:
        customer = self._customer(request.query)
        if customer is None:
            raise _not_found("customer")
        mine = [s for s in self.subscriptions.values() if s.customer is customer]
        return web.json_response({"subscriptions": [_subscription(s) for s in mine]})

    async def _get_subscription(self, request: web.Request) -> web.Response:
        subscription = self._subscription(request.match_info["id"], request.query)
        return web.json_response(_subscription(subscription))

    # --- changes (idempotent on Idempotency-Key) -------------------------------------------

    async def _change_address(self, request: web.Request) -> web.Response:
        body = await request.json()
        order = self._order(request.match_info["id"], body)

        def change() -> tuple[int, dict[str, Any]]:
            if order.status != "processing":
                return 409, {"error": "already dispatched", "status": order.status}
            order.address = str(body.get("address", "")).strip()
            self.actions.append(("change_address", order.id))
            return 200, _order(order)

        return await self._once(request, change)

    async def _start_return(self, request: web.Request) -> web.Response:
        body = await request.json()
        order = self._order(str(body.get("order_id", "")), body)

        def start() -> tuple[int, dict[str, Any]]:
            today = date.today()
            if order.delivered is None:
                return 409, {"error": "not delivered yet", "eligible": False}
            if (today - order.delivered).days > RETURN_WINDOW_DAYS:
                return 409, {
                    "error": f"delivered more than {RETURN_WINDOW_DAYS} days ago",
                    "eligible": False,
                }
            number = f"R-{order.id.removeprefix('KC-')}"
            self.returns[number] = {"return_id": number, "order_id": order.id}
            self.actions.append(("start_return", order.id))
            label = f"https://kettleandcrane.example/returns/{number}/label.pdf"
            return 201, {"return_id": number, "order_id": order.id, "label_url": label}

        return await self._once(request, start)

    async def _skip(self, request: web.Request) -> web.Response:
        body = await request.json()
        subscription = self._subscription(request.match_info["id"], body)

        def skip() -> tuple[int, dict[str, Any]]:
            subscription.next_delivery += timedelta(days=30)
            self.actions.append(("skip", subscription.id))
            return 200, _subscription(subscription)

        return await self._once(request, skip)

    async def _pause(self, request: web.Request) -> web.Response:
        body = await request.json()
        subscription = self._subscription(request.match_info["id"], body)

        def pause() -> tuple[int, dict[str, Any]]:
            weeks = int(body.get("weeks", 4))
            subscription.status = "paused"
            subscription.paused_until = date.today() + timedelta(weeks=weeks)
            subscription.next_delivery = subscription.paused_until
            self.actions.append(("pause", subscription.id))
            return 200, _subscription(subscription)

        return await self._once(request, pause)

    async def _once(self, request: web.Request, change: Any) -> web.Response:
        key = request.headers.get("Idempotency-Key")
        self.requested.append(key)
        if key is None or key not in self._replies:
            if self.delay:
                await asyncio.sleep(self.delay)
            if key is None or key not in self._replies:  # a retry may have come meanwhile
                reply = change()
                if key is None:
                    return web.json_response(reply[1], status=reply[0])
                self._replies[key] = reply
        status, body = self._replies[key]
        return web.json_response(body, status=status)

    # --- who may see what -------------------------------------------------------------------

    def _customer(self, proof: Any) -> Customer | None:
        for customer in self.customers:
            if any(
                proof.get(kind) and str(proof.get(kind)).strip().lower() == value.lower()
                for kind, value in (
                    ("email", customer.email),
                    ("phone", customer.phone),
                    ("user", customer.user),
                )
            ):
                return customer
        return None

    def _owns(self, customer: Customer, proof: Any) -> bool:
        if self._customer(proof) is customer:
            return True
        postcode = str(proof.get("postcode") or "")
        return _squash(postcode) == _squash(customer.postcode) != ""

    def _order(self, number: str, proof: Any) -> Order:
        order = self.orders.get(number.strip().upper())
        if order is None or not self._owns(order.customer, proof):
            raise _not_found("order")
        return order

    def _subscription(self, number: str, proof: Any) -> Subscription:
        subscription = self.subscriptions.get(number.strip().upper())
        if subscription is None or not self._owns(subscription.customer, proof):
            raise _not_found("subscription")
        return subscription


def _squash(postcode: str) -> str:
    return "".join(postcode.split()).upper()


def _not_found(what: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(
        text=f'{{"error": "no such {what} for these details"}}', content_type="application/json"
    )


def _order(order: Order) -> dict[str, Any]:
    return {
        "id": order.id,
        "items": order.items,
        "status": order.status,
        "placed": order.placed.isoformat(),
        "delivered": order.delivered.isoformat() if order.delivered else None,
        "eta": order.eta.isoformat() if order.eta else None,
        "carrier": order.carrier,
        "tracking": order.tracking,
        "address": order.address,
        "returnable": order.delivered is not None
        and (date.today() - order.delivered).days <= RETURN_WINDOW_DAYS,
    }


def _subscription(subscription: Subscription) -> dict[str, Any]:
    return {
        "id": subscription.id,
        "plan": subscription.plan,
        "status": subscription.status,
        "next_delivery": subscription.next_delivery.isoformat(),
        "paused_until": (
            subscription.paused_until.isoformat() if subscription.paused_until else None
        ),
    }


def seeded_shop() -> Shop:
    today = date.today()
    jane = Customer(
        "Jane Doe", "jane@example.com", "+447700900123", "u-1001", "SW1A 1AA", "1 Mall Rd, London"
    )
    max_ = Customer(
        "Max Müller", "max@example.de", "+4915112345678", "u-2001", "10115", "Torstr. 1, Berlin"
    )
    orders = [
        Order(
            "KC-1001",
            jane,
            ["Duo grinder"],
            "delivered",
            today - timedelta(days=14),
            delivered=today - timedelta(days=10),
            carrier="Royal Mail",
            tracking="RM123456GB",
        ),
        Order(
            "KC-1002",
            jane,
            ["Ethiopia Guji 250 g"],
            "dispatched",
            today - timedelta(days=2),
            eta=today + timedelta(days=1),
            carrier="DPD",
            tracking="DPD998877",
        ),
        Order(
            "KC-1003", jane, ["Crane kettle"], "processing", today, eta=today + timedelta(days=3)
        ),
        Order(
            "KC-2001",
            max_,
            ["Colombia Huila 1 kg"],
            "delivered",
            today - timedelta(days=50),
            delivered=today - timedelta(days=45),
            carrier="DHL",
            tracking="DHL445566",
        ),
        Order(
            "KC-2002", max_, ["Filter papers"], "processing", today, eta=today + timedelta(days=4)
        ),
    ]
    for order in orders:
        order.address = order.customer.address
    subscriptions = [
        Subscription("SUB-1001", jane, "Duo (two bags a month)", today + timedelta(days=6)),
        Subscription("SUB-2001", max_, "Solo (one bag a month)", today + timedelta(days=12)),
    ]
    return Shop(
        customers=[jane, max_],
        orders={order.id: order for order in orders},
        subscriptions={s.id: s for s in subscriptions},
    )


@asynccontextmanager
async def serving(shop: Shop) -> AsyncIterator[str]:
    """`shop` on a free loopback port, mounted where `gateway serve` mounts it; yields its
    base URL. For `gateway test`, which runs no web role."""
    app = web.Application()
    app.add_subapp(PREFIX, shop.app())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        _host, port = runner.addresses[0][:2]
        yield f"http://127.0.0.1:{port}{PREFIX}"
    finally:
        await runner.cleanup()


def aimed_at(connections: Mapping[str, ConnectionConfig], url: str) -> dict[str, ConnectionConfig]:
    """`connections` with those that call the demo shop of this process (a loopback host,
    the shop's path, whatever the port) calling it at `url` instead."""
    return {
        name: (
            ConnectionConfig.model_validate(
                {**connection.model_dump(), "base_url": url, "allowed_hosts": []}
            )
            if _is_demo_shop(connection.base_url)
            else connection
        )
        for name, connection in connections.items()
    }


def _is_demo_shop(base_url: str) -> bool:
    url = URL(base_url)
    return (url.host or "").lower() in _LOOPBACK and url.path.rstrip("/") == PREFIX
