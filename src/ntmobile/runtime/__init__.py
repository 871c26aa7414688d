"""ntmobile.runtime"""
