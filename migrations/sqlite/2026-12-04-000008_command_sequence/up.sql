-- Scale-out (issue 13): on PostgreSQL command numbers come from a sequence. SQLite has one writer
-- (the exchange holds a lock on the database file, see gridex_store's `WriterLock`), which numbers
-- commands from the log's maximum inside each group commit's transaction: nothing to create here.
SELECT 1;
