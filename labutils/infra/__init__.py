"""Plumbing below the lessons: file safety (atomic writes, locks, ownership markers, full disks).

Lesson modules import from here; nothing here imports a lesson module.
"""
