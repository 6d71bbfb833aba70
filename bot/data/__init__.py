"""Files shipped inside the wheel: the commented example config `liaison-bot init` writes.

A production install has no checkout, so what an administrator starts from must travel in
the package itself.
"""
