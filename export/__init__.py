"""tandem.export"""
