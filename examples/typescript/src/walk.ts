/**
 * A customer's path through Storefront, driven only by openapi-fetch and the types that
 * openapi-typescript generates from the service's OpenAPI document: sign up, log in, list
 * products page by page, place an order (and retry it), read it back, meet a typed problem,
 * cancel the order.
 *
 *   npm ci
 *   STOREFRONT_URL=http://127.0.0.1:8080 npm run generate   # writes src/schema.d.ts
 *   npm run build
 *   STOREFRONT_URL=… ADMIN_EMAIL=… ADMIN_PASSWORD=… npm run walk
 *
 * The admin only stocks the shelves: two products for the customer to order.
 */
import { randomUUID } from "node:crypto";
import createClient, { type Client } from "openapi-fetch";
import type { components, paths } from "./schema.js";

type Problem = components["schemas"]["Problem"];
type Product = components["schemas"]["Product"];

const baseUrl = process.env.STOREFRONT_URL ?? "http://127.0.0.1:8080";
const anonymous = createClient<paths>({ baseUrl });

/** The body of a successful answer; a problem stops the walk. */
function ok<T>(result: { data?: T; error?: Problem; response: Response }): T {
  if (result.error !== undefined || result.data === undefined) {
    throw new Error(`${result.response.status}: ${JSON.stringify(result.error)}`);
  }
  return result.data;
}

function check(condition: boolean, message: string): void {
  if (!condition) throw new Error(message);
}

/** A client that sends the session's bearer token with every request. */
async function logIn(email: string, password: string): Promise<Client<paths>> {
  const session = ok(await anonymous.POST("/v1/sessions", { body: { email, password } }));
  return createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${session.token}` } });
}

const run = randomUUID().slice(0, 8);
const [mugSku, teaSku] = [`MUG-${run}`, `TEA-${run}`];

const admin = await logIn(process.env.ADMIN_EMAIL ?? "", process.env.ADMIN_PASSWORD ?? "");
for (const [sku, price_cents, stock] of [[mugSku, 1250, 5], [teaSku, 480, 3]] as const) {
  const body = { sku, name: `Example ${sku}`, price_cents, stock };
  ok(await admin.POST("/v1/products", { body }));
}

const email = `grace-${run}@example.com`;
const password = "correct horse battery";
const user = ok(await anonymous.POST("/v1/users", { body: { name: "Grace", email, password } }));
console.log(`signed up ${user.email} (${user.id})`);

const customer = await logIn(email, password);
console.log("logged in");

// Newest first, one per page: every page after the first is reached through `next_cursor`.
const shelves = new Map<string, Product>();
let cursor: string | undefined;
do {
  const query = { per_page: 1, cursor };
  const page = ok(await customer.GET("/v1/products", { params: { query } }));
  for (const product of page.items) shelves.set(product.sku, product);
  cursor = page.next_cursor;
} while (!(shelves.has(mugSku) && shelves.has(teaSku)) && cursor !== undefined);
const mug = shelves.get(mugSku);
const tea = shelves.get(teaSku);
if (mug === undefined || tea === undefined) {
  throw new Error("the listing ended before both products were seen");
}
console.log(`listed ${mug.sku} and ${tea.sku}, page by page`);

// The same key and body twice: one order, one stock decrement.
const order = { items: [{ product_id: mug.id, quantity: 2 }] };
const idempotent = { params: { header: { "Idempotency-Key": randomUUID() } }, body: order };
const first = ok(await customer.POST("/v1/orders", idempotent));
const retried = ok(await customer.POST("/v1/orders", idempotent));
check(retried.id === first.id, "a retried order must be the same order");
console.log(`placed order ${first.id} for ${first.total_cents} cents; the retry got it back`);

const byId = { params: { path: { id: first.id } } };
const read = ok(await customer.GET("/v1/orders/{id}", byId));
check(read.id === first.id && read.status === "pending", "the order reads back as placed");
console.log(`read it back: ${read.status}, ${read.items.length} line(s)`);

// More than is in stock: the answer is a typed problem, not an exception.
const tooMany = { items: [{ product_id: tea.id, quantity: tea.stock + 1 }] };
const { error } = await customer.POST("/v1/orders", { body: tooMany });
if (error?.code !== "insufficient_stock") {
  throw new Error(`expected insufficient_stock, got ${JSON.stringify(error)}`);
}
const { status, code, requested, available } = error;
console.log(`refused with ${status} ${code}: requested ${requested}, available ${available}`);

const cancel = { ...byId, body: { status: "cancelled" as const } };
const cancelled = ok(await customer.PATCH("/v1/orders/{id}", cancel));
check(cancelled.status === "cancelled", "the order is cancelled");
console.log(`cancelled order ${cancelled.id}`);

const { response } = await customer.DELETE("/v1/sessions/current");
check(response.status === 204, `logging out answered ${response.status}`);
console.log("logged out");
