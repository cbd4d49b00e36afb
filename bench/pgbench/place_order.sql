-- The database's own limit for POST /v1/orders: the statements the service's transaction sends
-- (api/src/repo/orders.rs, without an Idempotency-Key), in the same number of round trips:
-- check the user; lock the products in id order; per line, decrement the stock with its guard;
-- insert the order (RETURNING); insert the items; per line, pg_notify; commit.
-- 1-3 distinct products, quantity 1, drawn from the first :products seeded products
-- (bench_product_ids (n serial primary key, id uuid)); -D users=<count> -D products=<count>.
-- Unit prices are a constant here; the service reads them from the locked rows.
\set u random(1, :users)
\set lines random(1, 3)
\set third :products / 3
\set a random(1, :third)
\set b random(:third + 1, 2 * :third)
\set c random(2 * :third + 1, :products)
BEGIN;
SELECT u.id AS uid,
       (SELECT id FROM bench_product_ids WHERE n = :a) AS pa,
       (SELECT id FROM bench_product_ids WHERE n = :b) AS pb,
       (SELECT id FROM bench_product_ids WHERE n = :c) AS pc
  FROM users u
 WHERE u.id = (SELECT id FROM bench_user_ids WHERE n = :u)
 LIMIT 1 \gset
\if :lines = 1
SELECT id, sku, name, price_cents, stock, created_at, updated_at FROM products
 WHERE id IN (:pa) ORDER BY id FOR UPDATE;
UPDATE products SET stock = stock - 1, updated_at = now() WHERE id = :pa AND stock >= 1;
INSERT INTO orders (id, user_id, status, total_cents, created_at, updated_at)
VALUES (gen_random_uuid(), :uid, 'pending', 100, now(), now())
RETURNING id AS oid, user_id, status, total_cents, created_at, updated_at \gset
INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents)
VALUES (:oid, :pa, 1, 100);
SELECT pg_notify('storefront_cache', 'products:' || CAST(:pa AS text));
\elif :lines = 2
SELECT id, sku, name, price_cents, stock, created_at, updated_at FROM products
 WHERE id IN (:pa, :pb) ORDER BY id FOR UPDATE;
UPDATE products SET stock = stock - 1, updated_at = now() WHERE id = :pa AND stock >= 1;
UPDATE products SET stock = stock - 1, updated_at = now() WHERE id = :pb AND stock >= 1;
INSERT INTO orders (id, user_id, status, total_cents, created_at, updated_at)
VALUES (gen_random_uuid(), :uid, 'pending', 200, now(), now())
RETURNING id AS oid, user_id, status, total_cents, created_at, updated_at \gset
INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents)
VALUES (:oid, :pa, 1, 100), (:oid, :pb, 1, 100);
SELECT pg_notify('storefront_cache', 'products:' || CAST(:pa AS text));
SELECT pg_notify('storefront_cache', 'products:' || CAST(:pb AS text));
\else
SELECT id, sku, name, price_cents, stock, created_at, updated_at FROM products
 WHERE id IN (:pa, :pb, :pc) ORDER BY id FOR UPDATE;
UPDATE products SET stock = stock - 1, updated_at = now() WHERE id = :pa AND stock >= 1;
UPDATE products SET stock = stock - 1, updated_at = now() WHERE id = :pb AND stock >= 1;
UPDATE products SET stock = stock - 1, updated_at = now() WHERE id = :pc AND stock >= 1;
INSERT INTO orders (id, user_id, status, total_cents, created_at, updated_at)
VALUES (gen_random_uuid(), :uid, 'pending', 300, now(), now())
RETURNING id AS oid, user_id, status, total_cents, created_at, updated_at \gset
INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents)
VALUES (:oid, :pa, 1, 100), (:oid, :pb, 1, 100), (:oid, :pc, 1, 100);
SELECT pg_notify('storefront_cache', 'products:' || CAST(:pa AS text));
SELECT pg_notify('storefront_cache', 'products:' || CAST(:pb AS text));
SELECT pg_notify('storefront_cache', 'products:' || CAST(:pc AS text));
\endif
COMMIT;
