"""ntmobile.cli"""
