"""The semantic-cache track: request streams, the stores a response cache keeps, and the runner that scores caches.

A semantic cache answers a request with a stored response when an earlier request meant the same thing. The
runner feeds a stream of requests (or a pair set) to a method, judges every lookup by the stream's equivalence
classes (which the cache never sees), and writes one row per request.
"""
