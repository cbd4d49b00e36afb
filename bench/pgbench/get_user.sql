-- The database's own limit for GET /v1/users/{id}: the primary-key lookup the service makes
-- (SeaORM's find_by_id(..).one(..), every column, LIMIT 1), for a random seeded user.
-- bench_user_ids (n serial primary key, id uuid) holds the seeded ids; -D users=<count>.
\set n random(1, :users)
SELECT u.id, u.name, u.email, u.password_hash, u.status, u.created_at, u.updated_at
  FROM users u
 WHERE u.id = (SELECT b.id FROM bench_user_ids b WHERE b.n = :n)
 LIMIT 1;
