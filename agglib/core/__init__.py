"""Helpers shared by the domain modules: validation, seeding, parallel maps, progress bars."""
