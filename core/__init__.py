"""The ground floor: the contracts and policies every other package imports (no project imports here)."""
