"""Reward-diversity workbook: Annealed Importance Guidance and the methods it competes with."""
