-- The best the database can do for POST /v1/orders in one statement (one round trip, its own
-- transaction): resolve the user and the 1-3 products, lock the products in id order, take one
-- of each with a guarded update only if every line is covered (the rows are read after locking,
-- so the check sees the latest stock and no order takes part of its lines), insert the order and
-- its items from the update's result, and send the service's cache notices. A line that cannot
-- be covered takes nothing and inserts nothing (the service's 409).
-- Same draw as place_order.sql: -D users=<count> -D products=<count> -D base=<offset>.
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
WITH buyer AS (
       SELECT u.id FROM users u WHERE u.id = (SELECT id FROM bench_user_ids WHERE n = :u)
     ),
     locked AS (
       SELECT p.id, p.stock, p.price_cents FROM products p
        WHERE p.id IN (SELECT id FROM bench_product_ids WHERE n IN (:a, :b, :c))
        ORDER BY p.id
          FOR UPDATE
     ),
     taken AS (
       UPDATE products p
          SET stock = p.stock - 1, updated_at = now(), version = p.version + 1
         FROM locked l
        WHERE p.id = l.id AND p.stock >= 1 AND p.price_cents = l.price_cents
          AND (SELECT count(*) FROM locked WHERE stock >= 1) = :lines
          AND EXISTS (SELECT 1 FROM buyer)
       RETURNING p.id, p.price_cents
     ),
     placed AS (
       INSERT INTO orders (id, user_id, status, total_cents, created_at, updated_at, version)
       SELECT gen_random_uuid(), b.id, 'pending', (SELECT sum(price_cents) FROM taken), now(), now(), 1
         FROM buyer b
        WHERE (SELECT count(*) FROM taken) = :lines
       RETURNING id
     ),
     items AS (
       INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents)
       SELECT o.id, t.id, 1, t.price_cents FROM placed o CROSS JOIN taken t
       RETURNING product_id
     )
SELECT (SELECT count(*) FROM placed) AS placed,
       (SELECT count(*) FROM (SELECT pg_notify('storefront_cache', 'products:' || i.product_id::text || '@' || current_setting('application_name')) FROM items i) n) AS announced;
