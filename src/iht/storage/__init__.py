"""Files on disk, for the layers above the maths: atomic writes, moving aside, typed records.

:mod:`iht.storage.files` writes a file whole or not at all and never deletes an earlier
result; :mod:`iht.storage.records` turns the config and result dataclasses into JSON and back,
checked against their field types.
"""
