"""cityclf: which city was this street-level photo taken in?"""
__version__ = "0.1.0"
