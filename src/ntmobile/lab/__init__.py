"""ntmobile.lab"""
