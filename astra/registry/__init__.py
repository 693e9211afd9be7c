"""astra.registry"""
