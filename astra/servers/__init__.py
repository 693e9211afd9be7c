"""astra.servers"""
