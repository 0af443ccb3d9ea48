"""The reviewer's side: replay and print recordings safely, search them for statements and commands."""

from gateway.review.replay import END_MARKER, ReplayResult, play, print_cast, print_statements
from gateway.review.sanitize import Neutraliser, neutralise, render_final_text
from gateway.review.search import Hit, search

__all__ = [
    "END_MARKER",
    "Hit",
    "Neutraliser",
    "ReplayResult",
    "neutralise",
    "play",
    "print_cast",
    "print_statements",
    "render_final_text",
    "search",
]
