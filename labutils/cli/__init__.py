"""The top floor: the commands behind `python -m labutils` (run, caption, prepare, dataset, refs). They may import
anything below; nothing imports them but `labutils.__main__`.
"""
