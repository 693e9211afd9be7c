"""astra.synthesis"""
