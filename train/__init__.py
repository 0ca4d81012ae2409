"""tandem.train"""
