"""One way to run work on Ray: a pool of actors of one class, fed keyed tasks with counted tries.

`tries` holds the retry bookkeeping (also used by the in-process runner), `placement` checks that
the cluster can hold the actors before anything is written, `members` tracks each actor's
lifecycle, and `pool` is the dispatch loop that ties them together. Beside the pool, `tasks` runs
stateless CPU work (the manifest scan's pieces) as Ray tasks or local processes, in order.
"""
