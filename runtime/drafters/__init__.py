"""Drafters: what proposes candidate tokens for the exact tree verify (Medusa today)."""
