"""tandem.runtime"""
