-- The database's own limit for POST /v1/orders: the statements the service's transaction sends
-- today (api/src/store/sql/orders.rs, without an Idempotency-Key), in the same number of round
-- trips: check the user; read the products without locking them (a line the read cannot cover
-- is refused there: ROLLBACK, the service's 409); insert the order (RETURNING); per line, take
-- the stock with an update guarded by the stock and the price just read, in ascending id order
-- (one that takes nothing is read again FOR SHARE to say why, then ROLLBACK); insert the items;
-- per line, pg_notify; commit.
-- 1-3 distinct products, quantity 1, drawn uniformly (as bench/lua/post_order.lua draws) from the
-- :products seeded products after the first :base (bench_product_ids (n serial primary key, id uuid)); -D users=<count>
-- -D products=<count> -D base=<offset>. Fewer than three lines repeat the first product's id in
-- the unused slots, so every statement keeps its shape; the lines are in ascending n, which the
-- seeder made ascending id.
-- The products' read is wrapped in an aggregate so that pgbench can branch on it (\gset takes
-- one row); it reads the same rows and columns the service reads.
\set u random(1, :users)
\set lines random(1, 3)
\set x random(1, :products)
\set y random(1, :products - 1)
\set y :y + case when :y >= :x then 1 else 0 end
\set lo least(:x, :y)
\set hi greatest(:x, :y)
\set z random(1, :products - 2)
\set z :z + case when :z >= :lo then 1 else 0 end
\set z :z + case when :z >= :hi then 1 else 0 end
\set a :base + case when :lines = 1 then :x when :lines = 2 then :lo else least(:lo, :z) end
\set b :base + case when :lines = 1 then :x when :lines = 2 then :hi else :lo + :hi + :z - least(:lo, :z) - greatest(:hi, :z) end
\set c case when :lines = 3 then :base + greatest(:hi, :z) else :a end
BEGIN;
SELECT u.id AS uid,
       (SELECT id FROM bench_product_ids WHERE n = :a) AS pa,
       (SELECT id FROM bench_product_ids WHERE n = :b) AS pb,
       (SELECT id FROM bench_product_ids WHERE n = :c) AS pc
  FROM users u
 WHERE u.id = (SELECT id FROM bench_user_ids WHERE n = :u)
 LIMIT 1 \gset
SELECT count(*) FILTER (WHERE p.stock >= 1) AS avail,
       max(p.price_cents) FILTER (WHERE p.id = :pa) AS price_a,
       max(p.price_cents) FILTER (WHERE p.id = :pb) AS price_b,
       max(p.price_cents) FILTER (WHERE p.id = :pc) AS price_c
  FROM (SELECT id, sku, name, price_cents, stock, created_at, updated_at, version
          FROM products WHERE id IN (:pa, :pb, :pc)) p \gset
\if :avail < :lines
ROLLBACK;
\else
\set total :price_a + case when :lines >= 2 then :price_b else 0 end + case when :lines >= 3 then :price_c else 0 end
INSERT INTO orders (id, user_id, status, total_cents, created_at, updated_at, version)
VALUES (gen_random_uuid(), :uid, 'pending', :total, now(), now(), 1)
RETURNING id AS oid, user_id, status, total_cents, created_at, updated_at, version \gset
\set failed 0
WITH t AS (UPDATE products SET stock = stock - 1, updated_at = now(), version = version + 1
            WHERE id = :pa AND stock >= 1 AND price_cents = :price_a RETURNING 1)
SELECT count(*) AS taken FROM t \gset
\if :taken = 0
\set failed 1
\elif :lines >= 2
WITH t AS (UPDATE products SET stock = stock - 1, updated_at = now(), version = version + 1
            WHERE id = :pb AND stock >= 1 AND price_cents = :price_b RETURNING 1)
SELECT count(*) AS taken FROM t \gset
\if :taken = 0
\set failed 2
\elif :lines >= 3
WITH t AS (UPDATE products SET stock = stock - 1, updated_at = now(), version = version + 1
            WHERE id = :pc AND stock >= 1 AND price_cents = :price_c RETURNING 1)
SELECT count(*) AS taken FROM t \gset
\if :taken = 0
\set failed 3
\endif
\endif
\endif
\if :failed > 0
SELECT id, sku, name, price_cents, stock, created_at, updated_at, version FROM products
 WHERE id = CASE CAST(:failed AS int) WHEN 1 THEN :pa::uuid WHEN 2 THEN :pb::uuid ELSE :pc::uuid END
 FOR SHARE;
ROLLBACK;
\elif :lines = 1
INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents)
VALUES (:oid, :pa, 1, :price_a);
SELECT pg_notify('storefront_cache', 'products:' || CAST(:pa AS text) || '@' || current_setting('application_name'));
COMMIT;
\elif :lines = 2
INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents)
VALUES (:oid, :pa, 1, :price_a), (:oid, :pb, 1, :price_b);
SELECT pg_notify('storefront_cache', 'products:' || CAST(:pa AS text) || '@' || current_setting('application_name'));
SELECT pg_notify('storefront_cache', 'products:' || CAST(:pb AS text) || '@' || current_setting('application_name'));
COMMIT;
\else
INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents)
VALUES (:oid, :pa, 1, :price_a), (:oid, :pb, 1, :price_b), (:oid, :pc, 1, :price_c);
SELECT pg_notify('storefront_cache', 'products:' || CAST(:pa AS text) || '@' || current_setting('application_name'));
SELECT pg_notify('storefront_cache', 'products:' || CAST(:pb AS text) || '@' || current_setting('application_name'));
SELECT pg_notify('storefront_cache', 'products:' || CAST(:pc AS text) || '@' || current_setting('application_name'));
COMMIT;
\endif
\endif
