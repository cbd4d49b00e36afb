"""A customer's path through Storefront, driven only by the client generated from its OpenAPI
document: sign up, log in, list products page by page, place an order (and retry it), read it
back, meet a typed problem, cancel the order.

    python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt
    openapi-python-client generate --url http://127.0.0.1:8080/openapi.json \\
        --config openapi-python-client.yaml --meta none --output-path storefront_client
    STOREFRONT_URL=http://127.0.0.1:8080 ADMIN_EMAIL=… ADMIN_PASSWORD=… python walk.py

The admin only stocks the shelves: two products for the customer to order.
"""

import os
import sys
import uuid
from typing import TypeVar

from storefront_client import AuthenticatedClient, Client
from storefront_client.api.orders import get_order, place_order, update_order
from storefront_client.api.products import create_product, list_products
from storefront_client.api.sessions import login, logout
from storefront_client.api.users import create_user
from storefront_client.models import (
    CreateProduct,
    CreateUser,
    Login,
    Order,
    OrderLine,
    OrderStatus,
    PlaceOrder,
    Problem,
    Product,
    UpdateOrder,
    User,
)
from storefront_client.types import UNSET, Response, Unset

BASE_URL = os.environ.get("STOREFRONT_URL", "http://127.0.0.1:8080")

T = TypeVar("T")


def expect(response: Response[T | Problem], status: int) -> T:
    """The parsed body of an answer with `status`; anything else stops the walk."""
    parsed = response.parsed
    if response.status_code != status or parsed is None or isinstance(parsed, Problem):
        sys.exit(f"expected {status}, got {response.status_code}: {response.content!r}")
    return parsed


def log_in(email: str, password: str) -> AuthenticatedClient:
    """A client that sends the session's bearer token with every request."""
    anonymous = Client(base_url=BASE_URL)
    session = expect(
        login.sync_detailed(client=anonymous, body=Login(email=email, password=password)),
        201,
    )
    return AuthenticatedClient(base_url=BASE_URL, token=session.token)


def stock_the_shelves(run: str) -> None:
    admin = log_in(os.environ["ADMIN_EMAIL"], os.environ["ADMIN_PASSWORD"])
    for sku, price_cents, stock in [(f"MUG-{run}", 1250, 5), (f"TEA-{run}", 480, 3)]:
        body = CreateProduct(sku=sku, name=f"Example {sku}", price_cents=price_cents, stock=stock)
        expect(create_product.sync_detailed(client=admin, body=body), 201)


def main() -> None:
    run = uuid.uuid4().hex[:8]
    stock_the_shelves(run)

    email, password = f"ada-{run}@example.com", "correct horse battery"
    body = CreateUser(name="Ada", email=email, password=password)
    # Signing up takes no token. openapi-python-client 0.29 still types the operation for an
    # AuthenticatedClient only: it does not yet read the document's `security: [{}, …]` as
    # "anonymous allowed" (openapi-python-client#1372). A plain Client is what it means.
    anonymous = Client(base_url=BASE_URL)
    signed_up = create_user.sync_detailed(client=anonymous, body=body)  # type: ignore[arg-type]
    user: User = expect(signed_up, 201)
    print(f"signed up {user.email} ({user.id})")

    customer = log_in(email, password)
    print("logged in")

    # Newest first, one per page: every page after the first is reached through `next_cursor`.
    shelves: dict[str, Product] = {}
    cursor: str | Unset = UNSET
    while True:
        page = expect(list_products.sync_detailed(client=customer, per_page=1, cursor=cursor), 200)
        shelves.update((product.sku, product) for product in page.items)
        if {f"MUG-{run}", f"TEA-{run}"} <= shelves.keys():
            break
        if isinstance(page.next_cursor, Unset):
            sys.exit("the listing ended before both products were seen")
        cursor = page.next_cursor
    mug, tea = shelves[f"MUG-{run}"], shelves[f"TEA-{run}"]
    print(f"listed {mug.sku} and {tea.sku}, page by page")

    # The same key and body twice: one order, one stock decrement.
    key = str(uuid.uuid4())
    order_body = PlaceOrder(items=[OrderLine(product_id=mug.id, quantity=2)])
    first: Order = expect(
        place_order.sync_detailed(client=customer, body=order_body, idempotency_key=key), 201
    )
    retried: Order = expect(
        place_order.sync_detailed(client=customer, body=order_body, idempotency_key=key), 201
    )
    assert retried.id == first.id, "a retried order must be the same order"
    print(f"placed order {first.id} for {first.total_cents} cents; the retry got it back")

    read: Order = expect(get_order.sync_detailed(first.id, client=customer), 200)
    assert read.id == first.id and read.status == OrderStatus.PENDING
    print(f"read it back: {read.status.value}, {len(read.items)} line(s)")

    # More than is in stock: the answer is a typed problem, not an exception.
    too_many = PlaceOrder(items=[OrderLine(product_id=tea.id, quantity=tea.stock + 1)])
    refused = place_order.sync(client=customer, body=too_many)
    if not isinstance(refused, Problem) or refused.code != "insufficient_stock":
        sys.exit(f"expected insufficient_stock, got {refused!r}")
    print(
        f"refused with {refused.status} {refused.code}: "
        f"requested {refused.requested}, available {refused.available}"
    )

    cancel = UpdateOrder(status=OrderStatus.CANCELLED)
    cancelled: Order = expect(
        update_order.sync_detailed(first.id, client=customer, body=cancel), 200
    )
    assert cancelled.status == OrderStatus.CANCELLED
    print(f"cancelled order {cancelled.id}")

    answer = logout.sync_detailed(client=customer)
    if answer.status_code != 204:
        sys.exit(f"logging out answered {answer.status_code}")
    print("logged out")


if __name__ == "__main__":
    main()
