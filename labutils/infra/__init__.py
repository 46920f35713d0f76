"""Plumbing below the lessons: safe files, downloads, the datasets on disk (synthetic shapes, Flickr8k, MS-COCO),
resizing and image loading, and the maintainers' tools (notebook runner, reference outputs, layout).

Lesson modules import from here; nothing here imports a lesson module (tests/test_layout.py).
"""
